"""Monitoring: feature drift and null share of live traffic, and live quality per model
version.

Both read the serving prediction/feedback log (Parquet files in a folder or S3 prefix) as a
source and publish their numbers as metadata, so the Dagster UI plots them over time; the
drift and quality sensors decide from those materialisations. With a Pushgateway configured
the same numbers become Prometheus gauges for the dashboard and alert rules.
"""

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import dagster as dg
import mlflow
import pandas as pd

from driftloop.data import BatchStore, TrainingSet
from driftloop.effect_size import effect_sizes, gated
from driftloop.estimation import (
    TAG_CALIBRATION,
    estimate_gap,
    estimates_by_version,
    parse_calibration,
)
from driftloop.metrics import Metric, metric_named
from driftloop.monitoring import (
    DRIFT_SAMPLE_ROWS,
    drift_sample,
    error_changes,
    error_stream,
    feature_drift,
    holdout_drop,
    join_labels,
    landed_labels,
    live_quality,
    model_frame,
    null_shares,
    prediction_drift,
    quality_drop,
    read_log,
    skipped_log_files,
)
from driftloop.pushgateway import push_feature_drift, push_live_quality
from driftloop.registry import CHAMPION, Registry, VersionInfo
from driftloop.schema import load_schema
from driftloop.settings import Settings
from driftloop.training import TRUSTED_TYPES, limited_threads
from resources.deployment import DriftloopResource

GROUP = "monitoring"
REFERENCE_ROWS = 5_000  # enough for stable drift tests, cheap for Evidently


@dg.asset(group_name=GROUP, kinds={"evidently", "mlflow"}, code_version="4")
def feature_drift_report(
    context: dg.AssetExecutionContext,
    driftloop: DriftloopResource,
    training_dataset: TrainingSet,
) -> dg.MaterializeResult:
    """Evidently's DataDriftPreset of the recent served traffic against the training rows
    (per-feature scores, the share of drifted features, the HTML report as an MLflow
    artifact of the champion's run, linked here), the drift of the champion's served
    predictions against its predictions on the training rows, and the null share per
    feature beside training's: a jump beyond `null_share_tolerance` is named on its own,
    since Evidently leaves nulls out of its tests."""
    settings = driftloop.settings()
    schema = training_dataset.schema
    since = datetime.now(UTC) - timedelta(seconds=settings.monitor_window_s)
    traffic = read_log(settings.prediction_log, since, settings.prediction_log_window_s)
    skipped = skipped_log_files(traffic)
    columns = schema.feature_names
    if len(traffic) < settings.monitor_min_rows:
        context.log.info(f"{len(traffic)} recent predictions; need {settings.monitor_min_rows}")
        # Not judged is unknown, not calm: NaN ends an alert that an old value would hold.
        unknown = dict.fromkeys(columns, math.nan)
        export(
            context,
            settings.pushgateway_url,
            lambda url: push_feature_drift(url, math.nan, unknown),
        )
        return dg.MaterializeResult(
            metadata={
                "rows_current": len(traffic),
                "judged": False,
                "share_drifted": 0.0,
                **skipped,
            }
        )
    text = [f.name for f in schema.features if f.dtype == "str"]
    current = model_frame(traffic, columns, text)
    # The reference rows before `model_frame`, not after: the same rows (sampled by
    # position), without converting every training row (2.2 s for 800k rows, measured).
    train = training_dataset.train
    sampled = train.sample(min(REFERENCE_ROWS, len(train)), random_state=settings.seed)
    reference = model_frame(sampled, columns, text)
    # bools are numeric to the model (1.0/0.0) but two levels: a categorical test fits them
    categorical = [*schema.categorical, *(f.name for f in schema.features if f.dtype == "bool")]
    numerical = [c for c in columns if c not in categorical]
    # Evidently's cost grows with the served rows; its verdict on a seeded sample is the
    # same but for shifts at its threshold (`drift_sample`). Null shares use every row.
    sample = drift_sample(current, DRIFT_SAMPLE_ROWS, settings.seed)
    evidently = feature_drift(reference, sample, numerical, categorical)
    # Drifted only beyond the reference's own window-to-window variation (`effect_size`).
    sizes = effect_sizes(reference, sample, numerical, categorical, settings.seed)
    result = gated(evidently, sizes)
    # Training rows had blanks made null at ingest: their null shares need no conversion.
    nulls = null_shares(train, current, columns, settings.null_share_tolerance)
    if nulls.jumps:
        changes = ", ".join(
            f"{c} {nulls.training[c]:.3f} -> {nulls.served[c]:.3f}" for c in nulls.jumps
        )
        context.log.warning(f"null share beyond training's + {nulls.tolerance}: {changes}")
    report = settings.logs / "drift" / f"drift-{datetime.now(UTC):%Y%m%dT%H%M%S}.html"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(result.html)
    export(
        context,
        settings.pushgateway_url,
        lambda url: push_feature_drift(url, result.share_drifted, nulls.served),
    )
    registry = driftloop.registry()
    champion = registry.by_alias(CHAMPION)
    predicted: dict[str, object] = {}
    if champion is not None:
        served = traffic[traffic["model_version"] == champion.version]
        model = registry.load_verified(champion.version, TRUSTED_TYPES)
        # One thread (`limited_threads`): on the two shared cores this predict of 5,000 rows
        # took 0.4-1.9 s on OpenMP's two threads, 0.1-0.2 s on one (measured); the same
        # predictions either way.
        with limited_threads(1):
            expected = pd.Series(model.predict(reference))
        if schema.is_regression:
            observed = pd.to_numeric(served["prediction"], errors="coerce")
        else:  # labels as the log keeps them
            observed, expected = served["prediction"].astype(str), expected.astype(str)
        observed = drift_sample(observed.dropna().to_frame(), DRIFT_SAMPLE_ROWS, settings.seed)
        drift = prediction_drift(expected, observed.iloc[:, 0], numeric=schema.is_regression)
        if drift is not None:
            predicted = {
                "prediction_drift_score": drift.score,
                "prediction_drift_method": drift.method,
                "prediction_drifted": drift.drifted,
            }
        if champion.run_id:
            mlflow.MlflowClient(settings.mlflow_tracking_uri).log_artifact(
                champion.run_id, str(report), "drift"
            )
    return dg.MaterializeResult(
        metadata={
            **predicted,
            **skipped,
            "judged": True,
            "share_drifted": result.share_drifted,
            "share_drifted_evidently": evidently.share_drifted,
            "drift_confirmed": result.share_drifted >= settings.drift_share_threshold,
            "drifted_columns": dg.MetadataValue.json(result.drifted_columns),
            "unjudged_columns": dg.MetadataValue.json(list(result.unjudged)),
            "null_jump_columns": dg.MetadataValue.json(nulls.jumps),
            "rows_current": len(current),
            "rows_drift_sample": result.rows_current,
            "rows_reference": result.rows_reference,
            "report": dg.MetadataValue.path(str(report)),
            **{f"score/{c.column}": c.score for c in result.columns},
            **{f"null_share/{c}": share for c, share in nulls.served.items()},
            **{f"effect/{c}": value for c, value in sizes.effect.items()},
            "scores": dg.MetadataValue.md(
                "| feature | method | score | threshold | effect | calm bound | drifted |\n"
                "|---|---|---|---|---|---|---|\n"
                + "\n".join(
                    f"| {c.column} | {c.method} | {c.score:.4f} | {c.threshold} | "
                    f"{sizes.effect.get(c.column, math.nan):.4f} | "
                    f"{sizes.bound.get(c.column, math.nan):.4f} | {c.drifted} |"
                    for c in result.columns
                )
            ),
            "null_shares": dg.MetadataValue.md(
                "| feature | training | served | jump |\n|---|---|---|---|\n"
                + "\n".join(
                    f"| {c} | {nulls.training[c]:.3f} | {nulls.served[c]:.3f} "
                    f"| {c in nulls.jumps} |"
                    for c in columns
                )
            ),
        }
    )


@dg.asset(group_name=GROUP, kinds={"river"}, code_version="2")
def live_model_quality(
    context: dg.AssetExecutionContext, driftloop: DriftloopResource
) -> dg.MaterializeResult:
    """The primary metric and accuracy per served model version, from predictions joined to
    their later labels (feedback by request id or id, and labelled batches landed since by
    id), and the sample where ADWIN / Page-Hinkley saw the champion's errors rise."""
    settings = driftloop.settings()
    schema = load_schema(settings.schema_path)
    if schema is None:  # nothing accepted yet, so nothing served to judge
        return dg.MaterializeResult(metadata={"labelled": 0})
    since = datetime.now(UTC) - timedelta(seconds=settings.monitor_window_s)
    window = settings.prediction_log_window_s
    predictions = read_log(settings.prediction_log, since, window)
    feedback = read_log(settings.feedback_log, since, window)
    join = join_labels(
        predictions,
        {  # feedback first: it names the prediction it labels
            "feedback": feedback,
            "batches": landed_labels(
                BatchStore(settings.batches), schema.id_columns, schema.target, since.timestamp()
            ),
        },
    )
    joined = join.rows
    if join.unmatched:
        context.log.info(f"{join.unmatched} labels matched no prediction served in the window")
    metric, classes = metric_named(schema.metric), [str(label) for label in schema.labels]
    registry = driftloop.registry()  # one client for the run: each built its own settings
    champion = registry.by_alias(CHAMPION)
    metadata: dict[str, object] = {
        "labelled": len(joined),
        "unmatched_labels": join.unmatched,
        "repeated_labels_ignored": join.repeated,
        **skipped_log_files(predictions, feedback),
        "metric": metric.name,
        **{f"labelled/{s}": int(n) for s, n in joined["label_source"].value_counts().items()},
    }
    qualities = live_quality(joined, metric, classes)
    for quality in qualities:
        if classes:  # regression has no decision to be right about
            metadata[f"accuracy/v{quality.model_version}"] = quality.accuracy
        metadata[f"{metric.name}/v{quality.model_version}"] = quality.score
        metadata[f"count/v{quality.model_version}"] = quality.count
    # A regressor has no accuracy: no gauge rather than NaN beside its RMSE.
    accuracy = {q.model_version: q.accuracy for q in qualities if math.isfinite(q.accuracy)}
    score = {q.model_version: q.score for q in qualities}
    threshold = settings.estimated_drop_threshold
    estimated = label_free(registry, threshold, predictions, joined, accuracy, champion, metadata)
    export(
        context,
        settings.pushgateway_url,
        lambda url: push_live_quality(url, metric.name, accuracy, score, estimated),
    )
    if champion is not None and not joined.empty:
        rows = joined[joined["model_version"] == champion.version].reset_index(drop=True)
        errors = error_stream(rows, classes, typical_error(champion.tags, rows, classes))
        changes = error_changes(errors)
        metadata["champion_version"] = champion.version
        metadata["change_at_sample"] = changes.first if changes.first is not None else -1
        metadata.update(against_holdout(rows, metric, classes, champion, settings))
        if changes.first is not None:
            drop = quality_drop(rows, changes.first, metric, classes)
            before, after = errors[: changes.first], errors[changes.first :]
            if classes:
                metadata["accuracy_before_change"] = (
                    float(1 - before.mean()) if len(before) else math.nan
                )
                metadata["accuracy_after_change"] = float(1 - after.mean())
            metadata[f"{drop.metric}_before_change"] = drop.before
            metadata[f"{drop.metric}_after_change"] = drop.after
            if math.isfinite(drop.drop):
                metadata["quality_drop"] = drop.drop
                metadata["quality_drop_metric"] = drop.metric
            metadata["change_at_time"] = float(rows["at"].iloc[changes.first].timestamp())
            context.log.warning(
                f"champion v{champion.version} errors rose at labelled sample "
                f"{changes.first} (ADWIN {changes.adwin}, Page-Hinkley {changes.page_hinkley}); "
                f"{drop.metric} {drop.before:.3f} -> {drop.after:.3f}"
            )
    return dg.MaterializeResult(metadata=metadata)


def against_holdout(
    rows: pd.DataFrame,
    metric: Metric,
    classes: list[str],
    champion: VersionInfo,
    settings: Settings,
) -> dict[str, object]:
    """The champion's live metric against the holdout score it was registered with
    (`holdout_drop`): `below_holdout` when worse beyond two standard errors and
    `DRIFTLOOP_QUALITY_HOLDOUT_MARGIN`, which `quality_sensor` retrains on."""
    registered = champion.tags.get("driftloop.holdout_score")
    if registered is None:
        return {}
    holdout_rows = int(champion.tags.get("driftloop.holdout_rows") or 0) or None
    found = holdout_drop(rows, metric, classes, float(registered), holdout_rows, settings.seed)
    if found is None:
        return {}
    return {
        "holdout_score": found.holdout,
        "live_score": found.live,
        "holdout_drop": found.drop,
        "holdout_drop_bound": found.bound,
        "below_holdout": found.beyond(settings.quality_holdout_margin),
    }


def label_free(
    registry: Registry,
    threshold: float,
    predictions: pd.DataFrame,
    joined: pd.DataFrame,
    realized: dict[str, float],
    champion: VersionInfo | None,
    metadata: dict[str, object],
) -> dict[str, float]:
    """Estimated accuracy per served version from its calibrated confidence on every served
    prediction, labelled or not (`driftloop.estimation`), into `metadata`: beside it the gap
    to the realized accuracy on the labelled rows, and whether the champion's estimate fell
    below its holdout accuracy by more than `threshold` (`DRIFTLOOP_ESTIMATED_DROP_THRESHOLD`)."""
    if predictions.empty or "model_version" not in predictions:
        return {}
    calibrations = {}
    for version in predictions["model_version"].dropna().unique():
        calibration = parse_calibration(registry.version(str(version)).tags.get(TAG_CALIBRATION))
        if calibration is not None:
            calibrations[str(version)] = calibration
    if not calibrations:
        metadata["estimated_accuracy"] = "not available (no calibrated classifier served)"
        return {}
    estimates = estimates_by_version(predictions, calibrations)
    for version, estimate in estimates.items():
        metadata[f"estimated_accuracy/v{version}"] = estimate.accuracy
        metadata[f"estimated_accuracy_rows/v{version}"] = estimate.rows
    labelled = estimates_by_version(joined, calibrations)
    for version, estimate in labelled.items():
        if version in realized:
            gap, beyond = estimate_gap(realized[version], estimate)
            metadata[f"estimate_gap/v{version}"] = gap
            metadata[f"estimate_gap_beyond_chance/v{version}"] = beyond
    if champion is not None and champion.version in estimates:
        holdout = champion.tags.get("driftloop.holdout_accuracy")
        estimate = estimates[champion.version]
        metadata["estimated_accuracy"] = estimate.accuracy
        metadata["estimated_version"] = champion.version
        if holdout is not None:
            metadata["estimated_drop"] = float(holdout) - estimate.accuracy
            metadata["estimated_drop_flagged"] = estimate.below(float(holdout), threshold)
    return {version: estimate.accuracy for version, estimate in estimates.items()}


def typical_error(tags: dict[str, str], rows: pd.DataFrame, classes: list[str]) -> float:
    """A regressor's usual absolute error, which scales its error stream: its holdout MAE
    as registered, else the mean over the first 100 labelled predictions (0 for a
    classifier, whose errors are 0/1 already)."""
    if classes:
        return 0.0
    registered = tags.get("driftloop.holdout_mae")
    if registered is not None:
        return float(registered)
    first = rows.head(100)
    absolute = (
        pd.to_numeric(first["label"], errors="coerce")
        - pd.to_numeric(first["prediction"], errors="coerce")
    ).abs()
    return float(absolute.mean()) if absolute.notna().any() else 0.0


def export(context: dg.AssetExecutionContext, url: str | None, push: Callable[[str], None]) -> None:
    """Push gauges when a Pushgateway is configured; an unreachable one costs a warning, not
    the monitoring run (the metadata above is the record)."""
    if url is None:
        return
    try:
        push(url)
    except OSError as error:
        context.log.warning(f"could not push gauges to the Pushgateway: {error}")
