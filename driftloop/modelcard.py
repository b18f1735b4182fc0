"""The model card: the MLflow version description a reviewer reads to see why a model won."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from driftloop.metrics import metric_named
from driftloop.training import SEARCH_SPACE, Evaluation, slice_scores

if TYPE_CHECKING:
    from driftloop.data import TrainingSet
    from driftloop.hpo import SearchResult
    from driftloop.promotion import GateDecision


def holdout_slices(
    model: Any, training: TrainingSet
) -> tuple[str, dict[str, dict[str, float]]] | None:
    """Scores per value of the first categorical feature (None if there is none): the
    primary metric where a slice defines it, and accuracy."""
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
) -> str:
    primary = metric_named(holdout.metric)
    direction = "higher" if primary.greater_is_better else "lower"
    others = [
        f"{name} {value:.4f}" for name, value in holdout.scores.items() if name != primary.name
    ]
    headline = "not defined on the holdout" if holdout.value is None else f"{holdout.value:.4f}"
    lines = [
        "## Data",
        f"- version `{training.version}` (sha256 `{training.data_hash}`)",
        f"- {len(training.train)} training rows, {len(training.holdout)} holdout rows, "
        f"{len(training.batches)} batches; target `{training.schema.target}`",
        "",
        "## Search",
        f"- study `{search.study_name}`: {search.complete} complete, {search.pruned} pruned",
        f"- best cross-validated {search.metric} {search.best_cv_score:.4f}",
        "- space: "
        + "; ".join(
            f"{family}({', '.join(f'{k} {v}' for k, v in space.items())})"
            for family, space in SEARCH_SPACE.items()
        ),
        "- best params: " + ", ".join(f"`{k}={_fmt(v)}`" for k, v in search.best_params.items()),
        "",
        "## Holdout",
        f"- **{primary.name} {headline}** (the primary metric, {direction} is better)",
        "- also: " + ", ".join(others),
    ]
    if slices is not None:
        feature, scores = slices
        columns = list(dict.fromkeys((primary.name, "accuracy")))
        lines += ["", f"| {feature} | {' | '.join(columns)} |", "|---" * (len(columns) + 1) + "|"]
        lines += [
            f"| {value} | "
            + " | ".join(f"{row[c]:.4f}" if c in row else "n/a" for c in columns)
            + " |"
            for value, row in scores.items()
        ]
        if any(primary.name not in row for row in scores.values()):
            lines.append(f"\nn/a: {primary.name} is not defined on a slice of one class")
    lines += ["", "## Promotion", decision.summary() if decision else "pending the gate"]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
