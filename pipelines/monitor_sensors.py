"""When does retraining start? Here: on confirmed feature drift or a jump in null share, or
a detected quality drop (in a monitoring run's verdict, or by the streaming detectors fed
each new labelled outcome on every tick), at most once per cooldown, plus an alert for
every failed run."""

import json
import math
import time
from typing import Any

import dagster as dg

from driftloop.alerts import notify
from driftloop.data import BatchStore
from driftloop.registry import CANDIDATE, CHALLENGER, CHAMPION, TAG_QUEUED
from driftloop.schema import load_schema
from driftloop.settings import Settings
from driftloop.storage import Folder
from driftloop.streaming import (
    Alarm,
    advance,
    has_new_feedback,
    load_state,
    newest_state,
    save_state,
)
from pipelines.jobs import canary_job, monitoring_job, training_job
from resources.deployment import (
    TRAIN_SINCE_TAG,
    TRIGGER_REASON_TAG,
    TRIGGER_TAG,
    DriftloopResource,
)

MONITOR_TRIGGERS = ("drift", "quality")
IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def last_monitor_retrain(instance: dg.DagsterInstance) -> float | None:
    """Creation time of the newest training run a monitor started (the shared cooldown)."""
    newest = None
    for trigger in MONITOR_TRIGGERS:
        records = instance.get_run_records(
            filters=dg.RunsFilter(job_name=training_job.name, tags={TRIGGER_TAG: trigger}),
            limit=1,
        )
        if records:
            stamp = records[0].create_timestamp.timestamp()
            newest = stamp if newest is None else max(newest, stamp)
    return newest


def last_calm_verdict(
    instance: dg.DagsterInstance, before: float, settings: Settings
) -> float | None:
    """When the drift monitor last judged enough traffic and found it below the threshold."""
    records = instance.fetch_materializations(dg.AssetKey("feature_drift_report"), limit=100)
    for record in records.records:  # newest first
        metadata = record.asset_materialization.metadata
        judged = metadata.get("judged")
        calm = float(metadata["share_drifted"].value) < settings.drift_share_threshold
        calm = calm and not _null_jumps(metadata)
        if record.timestamp < before and judged is not None and judged.value and calm:
            return record.timestamp
    return None


def _null_jumps(metadata: dict[str, Any]) -> list[str]:
    """Features whose served null share jumped (verdicts before null share had none)."""
    jumps = metadata.get("null_jump_columns")
    return list(jumps.value) if jumps is not None else []


def _why_not_now(
    last: float | None, settings: Settings, reason: str, train_since: float | None
) -> tuple[str, str] | None:
    """None when a retrain may start now; else ("cooldown" | "waiting", the skip message).

    `last` is `last_monitor_retrain`: the caller may need it too.
    """
    if last is not None and time.time() - last < settings.retrain_cooldown_s:
        wait = settings.retrain_cooldown_s - (time.time() - last)
        return "cooldown", f"{reason}, but in cooldown for {wait:.0f}s more"
    if train_since is not None:
        # A retrain that mostly sees the old world learns the old world: wait for labels.
        landed = BatchStore(settings.batches).rows_after(train_since)
        if landed < settings.retrain_min_rows:
            return "waiting", (
                f"{reason}; waiting for labelled rows since the change: "
                f"{landed} of {settings.retrain_min_rows}"
            )
    return None


def training_start(settings: Settings, since: float) -> float:
    """Where a drift or quality retrain's rows begin: at `since`, or at the change the
    error-stream detectors located after it. Covariate shift often comes just before or
    with a concept change, and rows of the old concept teach the retrain the old world
    (measured in the quick demo: a drift retrain from the last calm verdict took 5 s of
    them and recovered to 0.860 against the oracle's 0.919)."""
    located = newest_state(error_stream_folder(settings)).change_at
    return max(since, located) if located is not None else since


def _retrain_request(
    trigger: str,
    reason: str,
    run_key: str,
    train_since: float | None,
    extra_tags: dict[str, str] | None = None,
) -> dg.RunRequest:
    notify("drift_detected" if trigger == "drift" else "retrain_started", reason)
    # Ahead of queued ingest and monitoring runs: the rows it needs are already accepted.
    tags = {TRIGGER_TAG: trigger, TRIGGER_REASON_TAG: reason[:200], "dagster/priority": "5"}
    tags.update(extra_tags or {})
    if train_since is not None:
        # Rows from before the change would teach the retrain the old world again.
        tags[TRAIN_SINCE_TAG] = f"{train_since:.3f}"
    return dg.RunRequest(run_key=run_key, tags=tags)


def prediction_log_sensor(settings: Settings) -> dg.SensorDefinition:
    @dg.sensor(
        name="prediction_log_sensor",
        job=monitoring_job,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Runs the monitors when the serving log has published new files.",
    )
    def _sensor(context: dg.SensorEvaluationContext, driftloop: DriftloopResource):
        files = driftloop.settings().prediction_log.files((".parquet",))
        newest = max((f.mtime_ns for f in files), default=0)
        if newest <= int(context.cursor or 0):
            return dg.SensorResult(skip_reason="no new prediction log files")
        busy = context.instance.get_run_records(
            filters=dg.RunsFilter(job_name=monitoring_job.name, statuses=IN_FLIGHT), limit=1
        )
        if busy:  # on a busy machine runs take longer than the interval: never queue a backlog
            return dg.SensorResult(skip_reason="the previous monitoring run is still running")
        return dg.SensorResult(
            run_requests=[dg.RunRequest(run_key=f"log-{newest}")], cursor=str(newest)
        )

    return _sensor


def drift_sensor(settings: Settings) -> dg.SensorDefinition:
    @dg.asset_sensor(
        name="drift_sensor",
        asset_key=dg.AssetKey("feature_drift_report"),
        job=training_job,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Retrains when the share of drifted features reaches the threshold, or a "
            "feature's null share jumps beyond training's."
        ),
    )
    def _sensor(context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry):
        metadata = asset_event.asset_materialization.metadata
        share = float(metadata["share_drifted"].value)
        jumps = _null_jumps(metadata)
        if share < settings.drift_share_threshold and not jumps:
            return dg.SensorResult(
                skip_reason=f"drift share {share:.2f} below {settings.drift_share_threshold}"
                ", no null share jump"
            )
        # Evidently leaves nulls out of its tests: a jump in them is a change of its own,
        # named apart so the retrain's reason says which one happened.
        reasons = []
        if share >= settings.drift_share_threshold:
            columns = json.dumps(metadata["drifted_columns"].value)
            reasons.append(f"feature drift: share {share:.2f} ({columns})")
        if jumps:
            reasons.append(f"null share jump in {json.dumps(jumps)}")
        reason = "; ".join(reasons)
        # The change came after the monitor last judged traffic calm; without such a
        # verdict, somewhere in the window this one judged.
        calm = last_calm_verdict(context.instance, asset_event.timestamp, settings)
        since = calm if calm is not None else asset_event.timestamp - settings.monitor_window_s
        since = training_start(settings, since)
        blocked = _why_not_now(last_monitor_retrain(context.instance), settings, reason, since)
        if blocked is not None:  # drift persists: the next verdict asks again
            return dg.SensorResult(skip_reason=blocked[1])
        request = _retrain_request("drift", reason, f"drift-{asset_event.run_id}", since)
        return dg.SensorResult(run_requests=[request])

    return _sensor


def quality_sensor(settings: Settings) -> dg.SensorDefinition:
    """A detected drop stays pending in the cursor until its retrain starts.

    A change detector names the drop once, while the monitor window still holds traffic
    from both sides of it; waiting for labelled rows can outlast that window, so the
    trigger is kept here rather than re-derived from the newest verdict.
    """

    @dg.sensor(
        name="quality_sensor",
        job=training_job,
        minimum_interval_seconds=settings.monitor_sensor_interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Retrains when the champion's live quality drops at a detected change.",
    )
    def _sensor(context: dg.SensorEvaluationContext):
        cursor = json.loads(context.cursor or "{}")
        newest = context.instance.fetch_materializations(
            dg.AssetKey("live_model_quality"), limit=1
        ).records
        if newest and newest[0].storage_id > cursor.get("seen", -1):
            cursor["seen"] = newest[0].storage_id
            drop = _quality_drop(newest[0])  # noticed: when the monitor named it
            if drop is not None and "pending" not in cursor:
                # A drop that persists is named again by every verdict, each with a later
                # window start: the first one's start is where the new regime's rows begin.
                cursor["pending"] = drop
            alerted = cursor.get("estimate_alerted", False)
            cursor["estimate_alerted"] = _alert_estimated_drop(newest[0], alerted)
            newly = cursor["estimate_alerted"] and not alerted
            if newly and "pending" not in cursor and settings.estimated_drop_action == "retrain":
                cursor["pending"] = _estimated_drop(newest[0])
        pending = cursor.get("pending")
        if pending is None:
            return dg.SensorResult(
                skip_reason="no quality drop beyond the threshold", cursor=json.dumps(cursor)
            )
        last = last_monitor_retrain(context.instance)
        since = pending["since"]
        if since is not None:
            since = training_start(settings, since)
        blocked = _why_not_now(last, settings, pending["reason"], since)
        if blocked is not None:
            if blocked[0] == "cooldown" and last is not None and last >= pending["noticed"]:
                del cursor["pending"]  # a monitor retrain started since: it answered this drop
            return dg.SensorResult(skip_reason=blocked[1], cursor=json.dumps(cursor))
        del cursor["pending"]
        request = _retrain_request("quality", pending["reason"], pending["key"], since)
        return dg.SensorResult(run_requests=[request], cursor=json.dumps(cursor))

    def _quality_drop(record: dg.EventLogRecord) -> dict[str, Any] | None:
        """The drop a verdict names, if beyond the threshold, as the cursor keeps it.

        The monitor signs the drop by its metric's direction (> 0 is worse, for log loss
        too) and names the metric; verdicts from before it named one measured accuracy.
        """
        metadata = record.asset_materialization.metadata
        drop = metadata.get("quality_drop")
        value = float(drop.value) if drop is not None else math.nan
        if not math.isfinite(value) or value < settings.quality_drop_threshold:
            return _below_holdout(record)
        named = metadata.get("quality_drop_metric")
        metric = named.value if named is not None else "accuracy"
        change = int(metadata["change_at_sample"].value)
        at = metadata.get("change_at_time")
        return {
            "reason": f"quality drop {value:.3f} in {metric} at labelled sample {change}",
            "since": float(at.value) if at is not None else None,
            "noticed": record.timestamp,
            "key": f"quality-{record.run_id}",
        }

    def _alert_estimated_drop(record: dg.EventLogRecord, alerted: bool) -> bool:
        """One alert per episode when the champion's label-free estimate falls below its
        holdout accuracy (`estimated_drop_flagged`); whether the episode is still on."""
        metadata = record.asset_materialization.metadata
        flagged = metadata.get("estimated_drop_flagged")
        if flagged is None or not flagged.value:
            return False
        if not alerted:
            notify(
                "estimated_drop",
                f"champion v{metadata['estimated_version'].value}: accuracy estimated without "
                f"labels {metadata['estimated_accuracy'].value:.3f}, "
                f"{metadata['estimated_drop'].value:.3f} below its holdout accuracy",
            )
        return True

    def _estimated_drop(record: dg.EventLogRecord) -> dict[str, Any]:
        """A retrain for an estimated drop, on the rows labelled after it was noticed: it
        waits for `DRIFTLOOP_RETRAIN_MIN_ROWS` of them, as a drop at a change point does."""
        metadata = record.asset_materialization.metadata
        return {
            "reason": (
                f"accuracy estimated without labels {metadata['estimated_accuracy'].value:.3f}, "
                f"{metadata['estimated_drop'].value:.3f} below the holdout's"
            ),
            "since": record.timestamp,
            "noticed": record.timestamp,
            "key": f"estimated-{record.run_id}",
        }

    def _below_holdout(record: dg.EventLogRecord) -> dict[str, Any] | None:
        """A drop no change point in the window names (steady, or older than the window):
        the live metric under the holdout's beyond chance (the monitor's `below_holdout`).
        The whole window was worse, so the retrain learns from the window's start on."""
        metadata = record.asset_materialization.metadata
        below = metadata.get("below_holdout")
        if below is None or not below.value:
            return None
        metric = metadata["metric"].value
        return {
            "reason": (
                f"live {metric} {metadata['live_score'].value:.3f} below its holdout "
                f"{metadata['holdout_score'].value:.3f} by {metadata['holdout_drop'].value:.3f}"
                f" (two standard errors: {metadata['holdout_drop_bound'].value:.3f})"
            ),
            "since": record.timestamp - settings.monitor_window_s,
            "noticed": record.timestamp,
            "key": f"quality-{record.run_id}",
        }

    return _sensor


# What the streaming detectors found, on the retrain they start (beside TRAIN_SINCE_TAG,
# which is the change time).
DETECTOR_TAG = "driftloop/detector"
DETECTED_AFTER_TAG = "driftloop/detected_after_samples"
CHANGE_SAMPLE_TAG = "driftloop/change_at_sample"
CHANGE_AT_TAG = "driftloop/change_at"


def error_stream_folder(settings: Settings) -> Folder:
    """Where the streaming detectors keep their state: beside the run workers' values
    (local under the home, or the IO bucket in scale-out), never in the serving log."""
    if settings.io_bucket is None:
        return Folder(settings.io_dir / "error_stream")
    prefix = settings.io_prefix.strip("/")
    return Folder(f"s3://{settings.io_bucket}/{prefix}/error_stream", settings.s3_endpoint_url)


def _alarm_pending(alarm: Alarm, champion: str, key: str, noticed: float) -> dict[str, Any]:
    """An alarm as the cursor keeps it until its retrain starts."""
    reason = (
        f"error stream: {alarm.detector} saw v{champion}'s errors rise "
        f"{alarm.before:.3f} -> {alarm.after:.3f} after {alarm.samples} labelled samples "
        f"(change at sample {alarm.change_sample})"
    )
    tags = {
        DETECTOR_TAG: alarm.detector,
        DETECTED_AFTER_TAG: str(alarm.samples),
        CHANGE_SAMPLE_TAG: str(alarm.change_sample),
        CHANGE_AT_TAG: f"{alarm.change_at:.3f}",
    }
    return {
        "reason": reason,
        "since": alarm.change_at,
        "noticed": noticed,
        "key": key,
        "tags": tags,
    }


def error_stream_sensor(settings: Settings) -> dg.SensorDefinition:
    """ADWIN, Page-Hinkley and CUSUM fed, on each tick, the champion's labelled outcomes
    that are new since the last one; an alarm retrains as a quality drop does.

    The step runs here, in the sensor (a listing when nothing is new; a few reads and
    milliseconds of detector updates when feedback arrived), not in a run: detection
    waits for the next tick, not for a monitoring run. Its state is a JSON file per step
    (`error_stream_folder`) that the cursor names, so a tick whose cursor never committed
    is redone from the state before it and asks for the same run key. An alarm stays
    pending in the cursor until its retrain starts, like the quality sensor's drops.
    """

    @dg.sensor(
        name="error_stream_sensor",
        job=training_job,
        minimum_interval_seconds=settings.monitor_sensor_interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Feeds each new labelled outcome to ADWIN, Page-Hinkley and CUSUM on the "
        "champion's errors; retrains from the change time when one fires.",
    )
    def _sensor(context: dg.SensorEvaluationContext, driftloop: DriftloopResource):
        cursor = json.loads(context.cursor or "{}")
        home = driftloop.settings()
        folder = error_stream_folder(home)
        step = int(cursor.get("step", 0))
        state = load_state(folder, step)
        now, lookback = time.time(), home.monitor_window_s
        found = "no new feedback"
        if has_new_feedback(state, home.feedback_log, now, lookback):
            schema = load_schema(home.schema_path)
            champion = driftloop.registry().by_alias(CHAMPION) if schema is not None else None
            found = "new feedback, but no @champion to judge"
            if schema is not None and champion is not None:
                mae = champion.tags.get("driftloop.holdout_mae")
                result = advance(
                    state,
                    home.feedback_log,
                    home.prediction_log,
                    champion.version,
                    [str(label) for label in schema.labels],
                    float(mae) if mae is not None else None,
                    now,
                    lookback,
                    home.prediction_log_window_s,
                )
                step += 1
                save_state(folder, step, state)
                cursor["step"] = step
                found = f"{result.fed} new labelled outcomes, no alarm"
                for skipped in result.skipped:
                    context.log.warning(f"skipped log file {skipped.name}: {skipped.reason}")
                if result.alarms:
                    alarm = result.alarms[0]
                    context.log.warning(f"error-stream alarm: {alarm}")
                    if cursor.get("pending") is None:  # else the same episode, still waiting
                        key = f"error-stream-v{champion.version}-{state.alarms}"
                        cursor["pending"] = _alarm_pending(alarm, champion.version, key, now)
        pending = cursor.get("pending")
        if pending is None:
            return dg.SensorResult(skip_reason=found, cursor=json.dumps(cursor))
        last = last_monitor_retrain(context.instance)
        blocked = _why_not_now(last, settings, pending["reason"], pending["since"])
        if blocked is not None:
            if blocked[0] == "cooldown" and last is not None and last >= pending["noticed"]:
                del cursor["pending"]  # a monitor retrain started since: it answered this
            return dg.SensorResult(skip_reason=blocked[1], cursor=json.dumps(cursor))
        del cursor["pending"]
        request = _retrain_request(
            "quality", pending["reason"], pending["key"], pending["since"], pending["tags"]
        )
        return dg.SensorResult(run_requests=[request], cursor=json.dumps(cursor))

    return _sensor


@dg.run_failure_sensor(name="run_failure_alert", default_status=dg.DefaultSensorStatus.RUNNING)
def run_failure_alert(context: dg.RunFailureSensorContext) -> None:
    """Every failed run becomes an alert with its job and first error line."""
    message = context.failure_event.message or "run failed"
    notify(
        "run_failure",
        f"{context.dagster_run.job_name} run {context.dagster_run.run_id} failed",
        {"error": message.splitlines()[0]},
    )


def canary_sensor(settings: Settings) -> dg.SensorDefinition:
    @dg.sensor(
        name="canary_sensor",
        job=canary_job,
        minimum_interval_seconds=settings.canary_sensor_interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Takes the next canary step while a @challenger exists.",
    )
    def _sensor(context: dg.SensorEvaluationContext, driftloop: DriftloopResource):
        policy = driftloop.settings().promotion_policy
        if policy != "canary":
            return dg.SensorResult(skip_reason=f"promotion policy is {policy!r}, not 'canary'")
        registry = driftloop.registry()
        if registry.by_alias(CHALLENGER) is None:
            # A canary ended outside the job (`driftloop promote`, the admin API) while a
            # passing version waited: `canary_decision` starts the queued one.
            waiting = registry.by_alias(CANDIDATE)
            if waiting is None or TAG_QUEUED not in waiting.tags:
                return dg.SensorResult(skip_reason="no @challenger")
        busy = context.instance.get_run_records(
            filters=dg.RunsFilter(job_name=canary_job.name, statuses=IN_FLIGHT), limit=1
        )
        if busy:
            return dg.SensorResult(skip_reason="the previous canary step is still running")
        # Canary steps go ahead of queued ingest and monitoring runs: traffic is waiting.
        return dg.SensorResult(run_requests=[dg.RunRequest(tags={"dagster/priority": "10"})])

    return _sensor
