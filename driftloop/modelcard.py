"""The model card: the MLflow version description a reviewer reads to see why a model won."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from driftloop.training import SEARCH_SPACE, Evaluation, slice_accuracy

if TYPE_CHECKING:
    from driftloop.data import TrainingSet
    from driftloop.hpo import SearchResult
    from driftloop.promotion import GateDecision


def holdout_slices(model: Any, training: TrainingSet) -> tuple[str, dict[str, float]] | None:
    """Accuracy per value of the first categorical feature (None if there is none)."""
    if not training.schema.categorical:
        return None
    feature = training.schema.categorical[0]
    x, y = training.xy(training.holdout)
    return feature, slice_accuracy(model, x, y, feature)


def render_card(
    training: TrainingSet,
    search: SearchResult,
    holdout: Evaluation,
    slices: tuple[str, dict[str, float]] | None,
    decision: GateDecision | None = None,
) -> str:
    lines = [
        "## Data",
        f"- version `{training.version}` (sha256 `{training.data_hash}`)",
        f"- {len(training.train)} training rows, {len(training.holdout)} holdout rows, "
        f"{len(training.batches)} batches; target `{training.schema.target}`",
        "",
        "## Search",
        f"- study `{search.study_name}`: {search.complete} complete, {search.pruned} pruned",
        f"- best cross-validated accuracy {search.best_cv_accuracy:.4f}",
        "- space: "
        + "; ".join(
            f"{family}({', '.join(f'{k} {v}' for k, v in space.items())})"
            for family, space in SEARCH_SPACE.items()
        ),
        "- best params: " + ", ".join(f"`{k}={_fmt(v)}`" for k, v in search.best_params.items()),
        "",
        "## Holdout",
        f"- accuracy {holdout.accuracy:.4f}, log-loss {holdout.log_loss:.4f}"
        + (f", ROC AUC {holdout.roc_auc:.4f}" if holdout.roc_auc is not None else ""),
    ]
    if slices is not None:
        feature, accuracy = slices
        lines += ["", f"| {feature} | accuracy |", "|---|---|"]
        lines += [f"| {value} | {acc:.4f} |" for value, acc in accuracy.items()]
    lines += ["", "## Promotion", decision.summary() if decision else "pending the gate"]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
