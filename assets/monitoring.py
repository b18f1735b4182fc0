"""Monitoring: feature drift of live traffic and live quality per model version.

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

from driftloop.data import TrainingSet
from driftloop.monitoring import error_changes, feature_drift, join_feedback, live_quality, read_log
from driftloop.pushgateway import push_drift_share, push_live_accuracy
from driftloop.registry import CHAMPION
from pipelines.resources import DriftloopResource

GROUP = "monitoring"
REFERENCE_ROWS = 5_000  # enough for stable drift tests, cheap for Evidently


@dg.asset(group_name=GROUP, kinds={"evidently", "mlflow"}, code_version="1")
def feature_drift_report(
    context: dg.AssetExecutionContext,
    driftloop: DriftloopResource,
    training_dataset: TrainingSet,
) -> dg.MaterializeResult:
    """Evidently's DataDriftPreset of the recent served traffic against the training rows:
    per-feature scores, the share of drifted features, and the HTML report (an MLflow
    artifact of the champion's run, linked here)."""
    settings = driftloop.settings()
    since = datetime.now(UTC) - timedelta(seconds=settings.monitor_window_s)
    traffic = read_log(settings.prediction_log, since, settings.prediction_log_window_s)
    columns = training_dataset.schema.feature_names
    if len(traffic) < settings.monitor_min_rows:
        context.log.info(f"{len(traffic)} recent predictions; need {settings.monitor_min_rows}")
        # Not judged is unknown, not calm: NaN ends a drift alert that an old value would hold.
        export(context, settings.pushgateway_url, lambda url: push_drift_share(url, math.nan))
        return dg.MaterializeResult(
            metadata={"rows_current": len(traffic), "judged": False, "share_drifted": 0.0}
        )
    reference = training_dataset.train.sample(
        min(REFERENCE_ROWS, len(training_dataset.train)), random_state=settings.seed
    )
    result = feature_drift(reference, traffic, columns)
    report = settings.logs / "drift" / f"drift-{datetime.now(UTC):%Y%m%dT%H%M%S}.html"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(result.html)
    export(
        context, settings.pushgateway_url, lambda url: push_drift_share(url, result.share_drifted)
    )
    champion = driftloop.registry().by_alias(CHAMPION)
    if champion is not None and champion.run_id:
        mlflow.MlflowClient(settings.mlflow_tracking_uri).log_artifact(
            champion.run_id, str(report), "drift"
        )
    return dg.MaterializeResult(
        metadata={
            "judged": True,
            "share_drifted": result.share_drifted,
            "drift_confirmed": result.share_drifted >= settings.drift_share_threshold,
            "drifted_columns": dg.MetadataValue.json(result.drifted_columns),
            "rows_current": result.rows_current,
            "rows_reference": result.rows_reference,
            "report": dg.MetadataValue.path(str(report)),
            **{f"score/{c.column}": c.score for c in result.columns},
            "scores": dg.MetadataValue.md(
                "| feature | method | score | threshold | drifted |\\n|---|---|---|---|---|\\n"
                + "\\n".join(
                    f"| {c.column} | {c.method} | {c.score:.4f} | {c.threshold} | {c.drifted} |"
                    for c in result.columns
                )
            ),
        }
    )


@dg.asset(group_name=GROUP, kinds={"river"}, code_version="1")
def live_model_quality(
    context: dg.AssetExecutionContext, driftloop: DriftloopResource
) -> dg.MaterializeResult:
    """Accuracy and log-loss per served model version from predictions joined to their
    later feedback, and the sample where ADWIN / Page-Hinkley saw the champion's errors rise."""
    settings = driftloop.settings()
    since = datetime.now(UTC) - timedelta(seconds=settings.monitor_window_s)
    joined = join_feedback(
        read_log(settings.prediction_log, since, settings.prediction_log_window_s),
        read_log(settings.feedback_log, since, settings.prediction_log_window_s),
    )
    champion = driftloop.registry().by_alias(CHAMPION)
    metadata: dict[str, object] = {"labelled": len(joined)}
    qualities = live_quality(joined)
    for quality in qualities:
        metadata[f"accuracy/v{quality.model_version}"] = quality.accuracy
        metadata[f"log_loss/v{quality.model_version}"] = quality.log_loss
        metadata[f"count/v{quality.model_version}"] = quality.count
    accuracy = {q.model_version: q.accuracy for q in qualities}
    export(context, settings.pushgateway_url, lambda url: push_live_accuracy(url, accuracy))
    if champion is not None:
        rows = joined[joined["model_version"] == champion.version]
        errors = (rows["prediction"].astype(str) != rows["label"].astype(str)).to_numpy()
        changes = error_changes(errors.astype(int))
        metadata["champion_version"] = champion.version
        metadata["change_at_sample"] = changes.first if changes.first is not None else -1
        if changes.first is not None:
            before = 1 - errors[: changes.first].mean() if changes.first else float("nan")
            after = 1 - errors[changes.first :].mean()
            metadata["accuracy_before_change"] = float(before)
            metadata["accuracy_after_change"] = float(after)
            metadata["quality_drop"] = float(before - after)
            metadata["change_at_time"] = float(rows["at"].iloc[changes.first].timestamp())
            context.log.warning(
                f"champion v{champion.version} error rate changed at labelled sample "
                f"{changes.first} (ADWIN {changes.adwin}, Page-Hinkley {changes.page_hinkley})"
            )
    return dg.MaterializeResult(metadata=metadata)


def export(context: dg.AssetExecutionContext, url: str | None, push: Callable[[str], None]) -> None:
    """Push gauges when a Pushgateway is configured; an unreachable one costs a warning, not
    the monitoring run (the metadata above is the record)."""
    if url is None:
        return
    try:
        push(url)
    except OSError as error:
        context.log.warning(f"could not push gauges to the Pushgateway: {error}")
