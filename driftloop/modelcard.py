"""The model card: the MLflow version description a reviewer reads to see why a model won."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from driftloop.metrics import metric_named
from driftloop.training import SEARCH_SPACES, Evaluation, model_output, slice_scores, task_kind

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from driftloop.data import TrainingSet
    from driftloop.hpo import SearchResult
    from driftloop.promotion import GateDecision


def holdout_slices(
    model: Any, training: TrainingSet
) -> tuple[str, dict[str, dict[str, float]]] | None:
    """Scores per value of the first categorical feature (None if there is none): the
    primary metric where a slice defines it, and accuracy (regression: MAE)."""
    if not training.schema.categorical:
        return None
    feature = training.schema.categorical[0]
    x, y = training.xy(training.holdout)
    return feature, slice_scores(model, x, y, feature, training.schema.metric)


def render_card(
    training: TrainingSet,
    search: SearchResult,
    holdout: Evaluation,
    slices: tuple[str, dict[str, dict[str, float]]] | None,
    decision: GateDecision | None = None,
    semver: str | None = None,
    review: str | None = None,
) -> str:
    primary = metric_named(holdout.metric)
    schema = training.schema
    direction = "higher" if primary.greater_is_better else "lower"
    others = [
        f"{name} {value:.4f}" for name, value in holdout.scores.items() if name != primary.name
    ]
    headline = "not defined on the holdout" if holdout.value is None else f"{holdout.value:.4f}"
    lines = [
        *([f"**version {semver}**", ""] if semver else []),
        "## Data",
        f"- version `{training.version}` (sha256 `{training.data_hash}`)",
        f"- {len(training.train)} training rows, {len(training.holdout)} holdout rows, "
        f"{len(training.batches)} batches; target `{schema.target}` ({schema.task})",
        "",
        "## Search",
        f"- study `{search.study_name}`: {search.complete} complete, {search.pruned} pruned",
        f"- best cross-validated {search.metric} {search.best_cv_score:.4f}",
        "- space: "
        + "; ".join(
            f"{family}({', '.join(f'{k} {v}' for k, v in space.items())})"
            for family, space in SEARCH_SPACES[task_kind(schema.task)].items()
        ),
        "- best params: " + ", ".join(f"`{k}={_fmt(v)}`" for k, v in search.best_params.items()),
        "",
        "## Holdout",
        f"- **{primary.name} {headline}** (the primary metric, {direction} is better)",
        "- also: " + ", ".join(others),
    ]
    if schema.is_regression:
        lines.append(f"- {_mean_baseline(training)}; residuals: `residuals.png` in the run")
    if slices is not None:
        feature, scores = slices
        columns = list(dict.fromkeys((primary.name, "mae" if schema.is_regression else "accuracy")))
        lines += ["", f"| {feature} | {' | '.join(columns)} |", "|---" * (len(columns) + 1) + "|"]
        lines += [
            f"| {value} | "
            + " | ".join(f"{row[c]:.4f}" if c in row else "n/a" for c in columns)
            + " |"
            for value, row in scores.items()
        ]
        if any(primary.name not in row for row in scores.values()):
            lines.append(f"\nn/a: {primary.name} is not defined on a slice of one class")
    if review:
        lines += ["", "## Slices and fairness (challenger vs champion)", review]
    lines += ["", "## Promotion", decision.summary() if decision else "pending the gate"]
    return "\n".join(lines)


def _mean_baseline(training: TrainingSet) -> str:
    """What predicting the training mean scores on the holdout: the bar any regressor must
    clear to have learnt something (R² is 0 there)."""
    _, y_train = training.xy(training.train)
    _, y_holdout = training.xy(training.holdout)
    guess = np.full(len(y_holdout), float(y_train.mean()))
    rmse = float(np.sqrt(np.mean((y_holdout.to_numpy(dtype=float) - guess) ** 2)))
    return f"predicting the training mean ({float(y_train.mean()):.4g}) scores rmse {rmse:.4f}"


def residual_plot(model: Any, training: TrainingSet) -> Figure:
    """Holdout residuals against predictions (a funnel or a curve says the model misses a
    pattern) beside their histogram, for a regressor's MLflow run."""
    from matplotlib.figure import Figure

    x, y = training.xy(training.holdout)
    predicted = model_output(model, x)
    residuals = y.to_numpy(dtype=float) - predicted
    figure = Figure(figsize=(9, 3.6))
    scatter, histogram = figure.subplots(1, 2)
    scatter.scatter(predicted, residuals, s=6, alpha=0.5)
    scatter.axhline(0, color="black", linewidth=0.8)
    scatter.set(xlabel="prediction", ylabel="residual (true - predicted)", title="holdout")
    histogram.hist(residuals, bins=40)
    histogram.set(xlabel="residual", ylabel="rows", title=f"{len(residuals)} holdout rows")
    figure.tight_layout()
    return figure


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
