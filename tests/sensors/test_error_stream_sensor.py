"""The error-stream sensor on served feedback written by the serving log's own writer."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from driftloop.registry import CHAMPION, Registry
from driftloop.schema import load_schema
from driftloop.settings import Settings, load_settings
from driftloop.simulate import DriftPlan, LoanStream
from driftloop.streaming import DETECTORS
from driftloop.training import TRUSTED_TYPES
from pipelines.monitor_sensors import (
    CHANGE_AT_TAG,
    DETECTED_AFTER_TAG,
    DETECTOR_TAG,
    error_stream_sensor,
    training_start,
)
from resources.deployment import TRAIN_SINCE_TAG, TRIGGER_TAG, DriftloopResource
from serving.prediction_log import FEEDBACK_SCHEMA, ParquetLog, prediction_schema
from serving.schemas import FeatureField

STEP = 0.01  # seconds between served predictions


def serve(settings: Settings, plan: DriftPlan, rows: int, start: datetime, name: str) -> None:
    """`rows` loan applications answered by the champion and labelled by feedback, both
    written through `ParquetLog` as the serving app writes them (closed: published)."""
    registry = Registry(settings.mlflow_tracking_uri, settings.model_name)
    champion = registry.by_alias(CHAMPION)
    model = registry.load_verified(champion.version, TRUSTED_TYPES)
    schema = load_schema(settings.schema_path)
    frame = LoanStream(seed=5, plan=plan).take_frame(rows, "label")
    features = frame.drop(columns=["label"])[schema.feature_names]
    predicted = model.predict(features)
    fields = tuple(FeatureField(f.name, f.dtype) for f in schema.features)
    logs = [
        ParquetLog(settings.prediction_log, prediction_schema(fields), name, 300, 10**6, print),
        ParquetLog(settings.feedback_log, FEEDBACK_SCHEMA, name, 300, 10**6, print),
    ]
    logs[0].append(
        [
            {
                **row,
                "request_id": f"{name}-{i}",
                "index": 0,
                "at": start + timedelta(seconds=i * STEP),
                "model_version": champion.version,
                "route": "champion",
                "prediction": str(predicted[i]),
            }
            for i, row in enumerate(features.to_dict("records"))
        ]
    )
    labelled = start + timedelta(seconds=rows * STEP + 1)
    logs[1].append(
        [
            {"request_id": f"{name}-{i}", "at": labelled, "label": str(label)}
            for i, label in enumerate(frame["label"])
        ]
    )
    for log in logs:
        log.close()


@pytest.fixture
def stream_home(trained_home: Settings, tmp_path: Path, monkeypatch) -> Settings:
    """The shared trained home, with a serving log of this test's own and no cooldown."""
    monkeypatch.setenv("DRIFTLOOP_HOME", str(trained_home.home))
    monkeypatch.setenv("DRIFTLOOP_PREDICTION_LOG_DIR", str(tmp_path / "log"))
    monkeypatch.setenv("DRIFTLOOP_RETRAIN_COOLDOWN_S", "0")
    monkeypatch.setenv("DRIFTLOOP_RETRAIN_MIN_ROWS", "0")
    return load_settings()


def tick(settings: Settings, instance: dg.DagsterInstance, cursor: str | None):
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"driftloop": DriftloopResource(home=str(settings.home))},
    )
    return error_stream_sensor(settings).evaluate_tick(context)


def test_served_feedback_across_a_change_requests_a_retrain_from_the_change(
    stream_home: Settings,
) -> None:
    start = datetime.now(UTC) - timedelta(minutes=2)
    with dg.instance_for_test() as instance:
        nothing = tick(stream_home, instance, None)
        assert nothing.run_requests == [] and nothing.skip_message == "no new feedback"

        serve(stream_home, DriftPlan(), 1000, start, "calm")
        calm = tick(stream_home, instance, nothing.cursor)
        assert calm.run_requests == []
        assert calm.skip_message == "1000 new labelled outcomes, no alarm"
        idle = tick(stream_home, instance, calm.cursor)  # nothing new: nothing read again
        assert idle.run_requests == [] and idle.skip_message == "no new feedback"

        # The world changes at the first of these rows (Agrawal's function 4 -> 1).
        onset = start + timedelta(seconds=1000 * STEP)
        plan = DriftPlan(concept_drift_at=0, drift_function=1)
        serve(stream_home, plan, 1000, onset, "changed")
        fired = tick(stream_home, instance, idle.cursor)
    (request,) = fired.run_requests
    assert request.tags[TRIGGER_TAG] == "quality"
    assert request.tags[DETECTOR_TAG] in DETECTORS
    samples = int(request.tags[DETECTED_AFTER_TAG])
    # 1,000 calm samples first; measured: CUSUM after 1,028, its change at sample 1,000
    # (the benchmark's slowest of 20 abrupt changes took 122 after the change)
    assert 1000 < samples <= 1300
    change_at = float(request.tags[CHANGE_AT_TAG])
    assert request.tags[TRAIN_SINCE_TAG] == request.tags[CHANGE_AT_TAG]
    # the estimated change within 100 served predictions of the real one
    assert abs(change_at - onset.timestamp()) <= 100 * STEP
    assert "error stream:" in request.tags["driftloop/trigger_reason"]
    # The drift and quality monitors' retrains start no earlier than this located change.
    calm_verdict = start.timestamp()
    assert training_start(stream_home, calm_verdict) == pytest.approx(change_at, abs=1e-3)
    assert training_start(stream_home, change_at + 5) == change_at + 5


def test_calm_feedback_requests_nothing(stream_home: Settings) -> None:
    start = datetime.now(UTC) - timedelta(minutes=2)
    with dg.instance_for_test() as instance:
        serve(stream_home, DriftPlan(), 2000, start, "steady")
        calm = tick(stream_home, instance, None)
    assert calm.run_requests == []
    assert calm.skip_message == "2000 new labelled outcomes, no alarm"
