"""The closed loop, shortened, through real Dagster, MLflow and Ray Serve.

Traffic to the served champion drifts (covariate shift and a switched concept) while the
labelled rows land as a file. Each step is the product's own: the prediction-log sensor
asks for a monitoring run, the drift sensor reads its materialisation and requests one
retrain, the retrain registers a `@challenger` that the canary sensor walks through the
serving admin API on live outcomes until it is promoted, and serving then answers with it.
Sensors are evaluated with real contexts on the home's instance and the runs they request
are executed on it, so the test does not wait on a daemon's tick intervals.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import dagster as dg
import httpx
import pytest

from driftloop.registry import CHALLENGER, CHAMPION, TAG_TRIGGER, Registry
from driftloop.settings import Settings, load_settings
from driftloop.simulate import DriftPlan, LoanStream
from pipelines.definitions import build_definitions
from pipelines.launch import ingest_pending, prepare_dagster_home
from resources.deployment import TRAIN_SINCE_TAG, TRIGGER_TAG, DriftloopResource
from serving import launch
from serving.app import ServeArgs
from serving.launch import free_port
from tests.conftest import FAST_ENV, land, train
from tests.waits import has_request_ids, logged

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PREDICT = "/v1/models/driftloop:predict"
ADMIN_KEY = "loop-admin-key-0123456789abcdef0123"
DRIFTED = DriftPlan(covariate_shift_at=0, concept_drift_at=0)


@dataclass(frozen=True)
class Loop:
    settings: Settings
    url: str
    registry: Registry


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    """A first champion trained under the canary policy, served on 127.0.0.1."""
    env = {
        **FAST_ENV,
        "DRIFTLOOP_HOME": str(tmp_path_factory.mktemp("loop") / "home"),
        "DRIFTLOOP_PROMOTION_POLICY": "canary",
        "DRIFTLOOP_ADMIN_API_KEY": ADMIN_KEY,
        "DRIFTLOOP_SERVE_PORT": str(free_port()),
        "DRIFTLOOP_PREDICTION_LOG_WINDOW_S": "2",
        # The monitors judge the last 45 s: the test's traffic, not the first training.
        "DRIFTLOOP_MONITOR_WINDOW_S": "45",
        "DRIFTLOOP_MONITOR_MIN_ROWS": "100",
        "DRIFTLOOP_RETRAIN_MIN_ROWS": "500",
        "DRIFTLOOP_CANARY_MIN_SAMPLES": "30",
        "DRIFTLOOP_CANARY_STEPS": "[0.5, 1.0]",
        # Latency here reflects two shared cores, not the model: judge accuracy.
        "DRIFTLOOP_CANARY_MAX_P99_MS": "60000",
    }
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("DAGSTER_HOME", raising=False)
        for key, value in env.items():
            patch.setenv(key, value)
        settings = load_settings()
        patch.setenv("DRIFTLOOP_SERVING_URL", f"http://127.0.0.1:{settings.serve_port}")
        land(settings, rows=3000, batch_rows=1500, seed=7)
        assert train(settings).success
        registry = Registry(settings.mlflow_tracking_uri, settings.model_name)
        assert registry.by_alias(CHAMPION).version == "1"
        try:
            url = launch.start(settings, ServeArgs(home=str(settings.home), poll_interval_s=0.2))
            yield Loop(load_settings(), url, registry)
        finally:
            launch.stop(settings)


def send(loop: Loop, stream: LoanStream, requests: int) -> dict[str, int]:
    """Single-instance requests, each followed by its true label as feedback."""
    answered: dict[str, int] = {}
    request_ids: set[str] = set()
    with httpx.Client(base_url=loop.url, timeout=30) as client:
        for i in range(requests):
            x, y = next(stream)
            answer = client.post(PREDICT, json={"instances": [{**x, "key": f"c{i}"}]})
            assert answer.status_code == 200, answer.text
            body = answer.json()
            answered[body["model_version"]] = answered.get(body["model_version"], 0) + 1
            request_ids.add(body["request_id"])
            feedback = {"request_id": body["request_id"], "label": y}
            assert client.post("/v1/feedback", json=feedback).status_code == 200
    # What the sensors and monitors read: the replica publishes what it logged every flush.
    logged(loop.settings.prediction_log, has_request_ids(request_ids))
    logged(loop.settings.feedback_log, has_request_ids(request_ids))
    return answered


def tick(
    defs: dg.Definitions,
    name: str,
    instance: dg.DagsterInstance,
    settings: Settings,
    cursor: str | None = None,
):
    """One evaluation of a sensor, as the daemon would run it (its cursor passed back in)."""
    sensor = defs.resolve_sensor_def(name)
    resources = {"driftloop": DriftloopResource(home=str(settings.home))}
    context = dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor)
    return sensor.evaluate_tick(context)


def run(
    defs: dg.Definitions, job: str, instance: dg.DagsterInstance, request: dg.RunRequest
) -> dg.ExecuteInProcessResult:
    result = defs.resolve_job_def(job).execute_in_process(instance=instance, tags=request.tags)
    assert result.success
    return result


def test_drift_retrains_and_the_canaried_challenger_takes_over(loop: Loop) -> None:
    settings, registry = loop.settings, loop.registry
    defs = build_definitions(settings)
    prepare_dagster_home(settings)
    with dg.DagsterInstance.get() as instance:
        assert set(send(loop, LoanStream(seed=21), 100)) == {"1"}  # calm
        # The world changes; the labelled rows of the new world land as files too.
        land_stream = LoanStream(seed=22, plan=DRIFTED)
        for name in ("after-drift-1.parquet", "after-drift-2.parquet"):
            settings.landing.write_frame(name, land_stream.take_frame(1000, settings.target_column))
            time.sleep(0.01)  # distinct landing times
        send(loop, LoanStream(seed=23, plan=DRIFTED), 500)
        ingest_pending(settings, instance, lambda _: None)  # what the landing sensor does

        (monitor,) = tick(defs, "prediction_log_sensor", instance, settings).run_requests
        run(defs, "monitoring", instance, monitor)
        drifted = tick(defs, "drift_sensor", instance, settings)
        (retrain,) = drifted.run_requests
        assert retrain.tags[TRIGGER_TAG] == "drift" and TRAIN_SINCE_TAG in retrain.tags
        again = tick(defs, "drift_sensor", instance, settings, drifted.cursor)
        assert again.run_requests == []  # one drift episode, one retrain

        trained = run(defs, "training", instance, retrain)
        candidate = trained.output_for_node("candidate_model")
        assert candidate.newly_registered and candidate.version.version == "2"
        assert registry.version("2").tags[TAG_TRIGGER].startswith("drift: feature drift")
        assert registry.by_alias(CHALLENGER).version == "2"
        assert registry.by_alias(CHAMPION).version == "1"  # the canary decides, not the gate
        # the training run itself gave the new challenger its first share of traffic
        started = trained.asset_materializations_for_node("canary_decision")[0].metadata
        assert started["verdict"].value == "start" and started["weight"].value > 0

        verdicts = []
        for _ in range(4):
            send(loop, LoanStream(seed=30 + len(verdicts), plan=DRIFTED), 200)
            (step,) = tick(defs, "canary_sensor", instance, settings).run_requests
            decided = run(defs, "canary", instance, step)
            metadata = decided.asset_materializations_for_node("canary_decision")[0].metadata
            verdicts.append(metadata["verdict"].value)
            if verdicts[-1] in ("promote", "rollback"):
                break
        assert "start" not in verdicts and verdicts[-1] == "promote", verdicts
        assert registry.by_alias(CHAMPION).version == "2"
        assert "no @challenger" in tick(defs, "canary_sensor", instance, settings).skip_message

    deadline = time.monotonic() + 30
    while set(send(loop, LoanStream(seed=40, plan=DRIFTED), 10)) != {"2"}:
        assert time.monotonic() < deadline, "serving never answered with the new champion"
