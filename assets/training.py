"""Training: the versioned dataset, its blocking checks, and the hyper-parameter search."""

import dagster as dg
from pydantic import Field

from driftloop.data import BATCH_COLUMN, TrainingSet, build_training_set
from driftloop.hpo import SearchResult, run_search
from driftloop.schema import load_schema, target_summary
from resources.deployment import (
    TRAIN_SINCE_TAG,
    TRIGGER_REASON_TAG,
    TRIGGER_TAG,
    DriftloopResource,
)

GROUP = "training"


@dg.asset(
    deps=["landed_batch"],
    group_name=GROUP,
    kinds={"pandas"},
    code_version="1",
)
def training_dataset(
    context: dg.AssetExecutionContext, driftloop: DriftloopResource
) -> dg.Output[TrainingSet]:
    """Every accepted batch, deduplicated; its version is the SHA-256 of its rows, and a
    row's side of the train/holdout split is fixed by the hash of the row and the seed."""
    settings = driftloop.settings()
    store = driftloop.batch_store()
    rows = store.read_all()
    since = context.run.tags.get(TRAIN_SINCE_TAG)
    if since is not None and not rows.empty:
        # After a detected change, older batches describe a world that no longer exists.
        recent = store.keys_after(float(since))
        rows = rows[rows[BATCH_COLUMN].isin(recent)].reset_index(drop=True)
        context.log.info(f"training window since {since}: {len(recent)} batches")
    schema = load_schema(settings.schema_path)
    if rows.empty or schema is None:
        raise dg.Failure(
            f"no accepted data yet: drop CSV or Parquet files into {settings.landing} "
            "and let the landing sensor (or `driftloop train`) ingest them"
        )
    training = build_training_set(rows, schema, settings.holdout_fraction, settings.seed)
    context.log.info(f"dataset {training.version}: {len(training.train)} train rows")
    return dg.Output(
        training,
        data_version=dg.DataVersion(training.data_hash),
        metadata={
            "data_hash": training.data_hash,
            "train_rows": len(training.train),
            "holdout_rows": len(training.holdout),
            "recent_holdout_rows": len(training.recent),
            "batches": len(training.batches),
            "train_since": since or "all batches",
            "target_summary" if schema.is_regression else "label_counts": dg.MetadataValue.json(
                target_summary(training.train, schema)
            ),
            "task": schema.task,
            "metric": schema.metric,
            "schema": dg.MetadataValue.md(
                "| feature | kind | dtype |\n|---|---|---|\n"
                + "\n".join(f"| {f.name} | {f.kind} | {f.dtype} |" for f in schema.features)
            ),
        },
    )


@dg.asset_check(
    asset=training_dataset, blocking=True, description="Enough rows to train and judge."
)
def enough_rows(training_dataset: TrainingSet, driftloop: DriftloopResource) -> dg.AssetCheckResult:
    minimum = driftloop.settings().min_rows
    train, holdout = len(training_dataset.train), len(training_dataset.holdout)
    return dg.AssetCheckResult(
        passed=train >= minimum and holdout > 0,
        description=f"{train} train rows (minimum {minimum}), {holdout} holdout rows",
        metadata={"train_rows": train, "holdout_rows": holdout, "minimum": minimum},
    )


@dg.asset_check(asset=training_dataset, blocking=True, description="Every label is present.")
def every_label_present(training_dataset: TrainingSet) -> dg.AssetCheckResult:
    target = training_dataset.schema.target
    present = set(training_dataset.train[target].unique().tolist())
    missing = [label for label in training_dataset.schema.labels if label not in present]
    return dg.AssetCheckResult(
        passed=not missing,
        description=f"labels missing from the training rows: {missing}"
        if missing
        else "all labels present",
        metadata={"missing": dg.MetadataValue.json([str(m) for m in missing])},
    )


class SearchConfig(dg.Config):
    """One run's search budget, shown and editable in the launchpad; unset fields take the
    deployment's `DRIFTLOOP_N_TRIALS` / `DRIFTLOOP_CV_FOLDS`."""

    trials: int | None = Field(default=None, ge=1, description="Optuna trials for this run.")
    cv_folds: int | None = Field(default=None, ge=2, description="Cross-validation folds.")


@dg.asset(group_name=GROUP, kinds={"optuna", "mlflow", "scikitlearn"}, code_version="1")
def hpo_study(
    context: dg.AssetExecutionContext,
    config: SearchConfig,
    driftloop: DriftloopResource,
    training_dataset: TrainingSet,
) -> dg.Output[SearchResult]:
    """An Optuna study (TPE, median pruning per CV fold) over the model families, optimising
    the schema's primary metric in its direction; each trial is a child MLflow run of one
    parent run per dataset version."""
    chosen = {"n_trials": config.trials, "cv_folds": config.cv_folds}
    settings = driftloop.settings().model_copy(
        update={key: value for key, value in chosen.items() if value is not None}
    )
    tags = {
        "driftloop.data_hash": training_dataset.data_hash,
        "driftloop.trigger": trigger_of(context),
        "dagster.run_id": context.run.run_id,
        "driftloop.train_since": context.run.tags.get(TRAIN_SINCE_TAG, "all batches"),
    }
    result = run_search(
        training_dataset, settings, driftloop.experiment_id(), tags, progress=context.log.info
    )
    history = result.best_so_far
    step = max(1, len(history) // 20)
    table = f"| trial | best CV {result.metric} |\n|---|---|\n" + "\n".join(
        f"| {i + 1} | {history[i]:.4f} |" for i in range(0, len(history), step)
    )
    return dg.Output(
        result,
        metadata={
            "study": result.study_name,
            "mlflow_parent_run_id": result.parent_run_id,
            "metric": result.metric,
            "best_cv_score": result.best_cv_score,
            "best_params": dg.MetadataValue.json(result.best_params),
            "trials_complete": result.complete,
            "trials_pruned": result.pruned,
            "trials_failed": result.failed,
            "new_trials": result.new_trials,
            "trials_per_minute": round(result.trials_per_minute, 1),
            "search_seconds": round(result.seconds, 2),
            "optimisation_history": dg.MetadataValue.md(table),
        },
    )


def trigger_of(context: dg.AssetExecutionContext) -> str:
    """Why this run happened, as set by the sensor, schedule or CLI that launched it."""
    trigger = context.run.tags.get(TRIGGER_TAG, "manual")
    reason = context.run.tags.get(TRIGGER_REASON_TAG)
    return f"{trigger}: {reason}" if reason else trigger
