"""A subtle episode end to end: a local concept change that costs ~3 points of accuracy,
found by the loop's own sensors and recovered by its own retrain and canary.

The loan stream's concept changes only for applicants aged 40 to 47 (`DriftPlan
.concept_region`, ~11 % of rows; the old champion is wrong on ~3 points more of all rows),
far below the old absolute quality trigger (5 points). Traffic is paced at the quick
demo's 50 requests/s to a real Ray Serve app, each answer followed by its label; every
15 s, as the daemon would, the served rows land as a file and are ingested, and the
monitoring sensors are evaluated with real contexts on the home's instance (the runs they
ask for are executed there). Calm traffic first (no retrain may start), then the change;
the first retrain request is the detection; the retrain, then the canary on live
outcomes, run while traffic goes on; accuracy is measured on the minute after promotion.

    .venv/bin/python scripts/bench_subtle.py --json subtle.json [--seed 7]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import pandas as pd

from driftloop.registry import CHAMPION, Registry
from driftloop.settings import Settings, load_settings
from driftloop.simulate import DriftPlan, LoanStream
from pipelines.definitions import build_definitions
from pipelines.launch import ingest_pending, prepare_dagster_home, run_training
from resources.deployment import TRIGGER_TAG, DriftloopResource
from serving import launch
from serving.app import ServeArgs

PREDICT = "/v1/models/driftloop:predict"
REGION = ("age", 40.0, 47.0)
RATE = 50.0  # requests/s, the quick demo's
TICK_S = 15.0  # the monitoring sensors' minimum interval
TARGET = "label"  # the settings' default target column
MONITORS = ("error_stream_sensor", "quality_sensor", "drift_sensor")


@dataclass
class Answer:
    t: float
    version: str
    correct: bool


class Traffic(threading.Thread):
    """Paced single-instance requests, each followed by its true label."""

    def __init__(self, url: str, stream: LoanStream) -> None:
        super().__init__(daemon=True)
        self.url, self.stream = url, stream
        self.started = time.monotonic()
        self.answers: list[Answer] = []
        self.unlanded: list[dict[str, Any]] = []
        self.failures = 0
        self.stop = threading.Event()

    def now(self) -> float:
        return time.monotonic() - self.started

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            sent = 0
            while not self.stop.is_set():
                due = self.started + sent / RATE  # paced, not bursty: the monitor windows are time
                if (wait := due - time.monotonic()) > 0:
                    self.stop.wait(wait)
                sent += 1
                x, y = next(self.stream)
                try:
                    answer = client.post(PREDICT, json={"instances": [x]})
                    answer.raise_for_status()
                    body = answer.json()
                    feedback = {"request_id": body["request_id"], "label": y}
                    client.post("/v1/feedback", json=feedback).raise_for_status()
                except httpx.HTTPError:
                    self.failures += 1
                    continue
                correct = str(body["predictions"][0]) == str(y)
                self.answers.append(Answer(self.now(), body["model_version"], correct))
                self.unlanded.append({**x, TARGET: y})

    def accuracy(self, since: float, until: float = float("inf"), version: str = "") -> float:
        chosen = [a for a in self.answers if since <= a.t < until and version in ("", a.version)]
        return round(sum(a.correct for a in chosen) / max(len(chosen), 1), 4)

    def labelled_since(self, t: float) -> int:
        return sum(1 for a in self.answers if a.t >= t)


def configure(home: Path, port: int) -> Settings:
    """The demo's monitoring configuration; this process is the code location."""
    os.environ.update(
        {
            "DRIFTLOOP_HOME": str(home),
            "DRIFTLOOP_N_TRIALS": "6",
            "DRIFTLOOP_CV_FOLDS": "2",
            "DRIFTLOOP_MIN_ROWS": "50",
            "DRIFTLOOP_PROMOTION_POLICY": "canary",
            "DRIFTLOOP_ADMIN_API_KEY": secrets.token_urlsafe(32),
            "DRIFTLOOP_SERVE_PORT": str(port),
            "DRIFTLOOP_SERVING_URL": f"http://127.0.0.1:{port}",
            "DRIFTLOOP_PREDICTION_LOG_WINDOW_S": "5",
            "DRIFTLOOP_MONITOR_WINDOW_S": "60",
            # A local change: a retrain on fewer new-regime rows than the champion had loses
            # more everywhere than it gains in the region (measured: 3,000 rows, -0.7 points).
            "DRIFTLOOP_RETRAIN_MIN_ROWS": "8000",
            "DRIFTLOOP_CANARY_MIN_SAMPLES": "40",
            "DRIFTLOOP_CANARY_STEPS": "[0.25, 1.0]",
            "DRIFTLOOP_CANARY_MAX_P99_MS": "60000",  # two shared cores: judge accuracy
        }
    )
    os.environ.pop("DAGSTER_HOME", None)
    return load_settings()


def tick(defs: dg.Definitions, name: str, instance: dg.DagsterInstance, cursors: dict) -> Any:
    """One evaluation of a sensor, as the daemon would run it (its cursor passed back in)."""
    settings = load_settings()
    context = dg.build_sensor_context(
        instance=instance,
        resources={"driftloop": DriftloopResource(home=str(settings.home))},
        cursor=cursors.get(name),
    )
    result = defs.resolve_sensor_def(name).evaluate_tick(context)
    cursors[name] = result.cursor
    return result


def execute(defs: dg.Definitions, job: str, instance: dg.DagsterInstance, request: Any) -> Any:
    result = defs.resolve_job_def(job).execute_in_process(instance=instance, tags=request.tags)
    if not result.success:
        raise RuntimeError(f"the {job} run failed")
    return result


def land_served(settings: Settings, traffic: Traffic, instance: dg.DagsterInstance) -> None:
    """The served rows, with their labels, as one landed file (what the team's export is)."""
    rows, traffic.unlanded = traffic.unlanded, []
    if rows:
        name = f"served-{time.time_ns()}.parquet"
        settings.landing.write_frame(name, pd.DataFrame.from_records(rows))
        ingest_pending(settings, instance, lambda _: None)


def monitor_round(
    defs: dg.Definitions, instance: dg.DagsterInstance, cursors: dict, alarms: dict[str, float]
) -> tuple[str, Any] | None:
    """What the daemon does in one tick interval; the first retrain request, if any.

    A sensor that has seen a change but waits for labelled rows of the new regime keeps it
    pending in its cursor: `alarms` gets the time each sensor first held one."""
    for request in tick(defs, "prediction_log_sensor", instance, cursors).run_requests:
        execute(defs, "monitoring", instance, request)
    for name in MONITORS:
        requests = tick(defs, name, instance, cursors).run_requests
        held = '"pending"' in (cursors.get(name) or "")  # the JSON cursors of our sensors
        if (requests or held) and name not in alarms:
            alarms[name] = time.monotonic()
        if requests:
            return name, requests[0]
    return None


def episode(seed: int, calm_s: float, timeout_s: float, out: Any = print) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="subtle-"))
    settings = configure(root / "home", launch.free_port())
    stream = LoanStream(seed=seed)
    settings.landing.write_frame("first.parquet", stream.take_frame(10_000, TARGET))
    prepare_dagster_home(settings)
    defs = build_definitions(settings)
    registry = Registry(settings.mlflow_tracking_uri, settings.model_name)
    with dg.DagsterInstance.get() as instance:
        ingest_pending(settings, instance, lambda _: None)
        if not run_training(settings, instance, "manual").success:
            raise RuntimeError("the first training run failed")
        first = registry.by_alias(CHAMPION).version
        url = launch.start(settings, ServeArgs(home=str(settings.home), poll_interval_s=0.2))
        traffic = Traffic(url, stream)
        cursors: dict[str, str | None] = {}
        result: dict[str, Any] = {"seed": seed, "region": list(REGION), "first_champion": first}
        try:
            traffic.start()
            calm_alarms: dict[str, float] = {}
            while traffic.now() < calm_s:
                traffic.stop.wait(TICK_S)
                land_served(settings, traffic, instance)
                monitor_round(defs, instance, cursors, calm_alarms)
            onset = traffic.now()
            stream.plan = DriftPlan(concept_drift_at=stream.position, concept_region=REGION)
            out(f"[{onset:.0f}s] subtle change: concept switched for {REGION}")
            fired, alarms = None, {}
            while fired is None and traffic.now() - onset < timeout_s:
                traffic.stop.wait(TICK_S)
                land_served(settings, traffic, instance)
                fired = monitor_round(defs, instance, cursors, alarms)
            if fired is None:
                raise RuntimeError(f"no retrain requested {timeout_s:.0f}s after the change")
            requested = traffic.now()
            sensor, request = fired
            out(f"[{requested:.0f}s] {sensor}: {request.tags.get('driftloop/trigger_reason')}")
            first_alarm = min(alarms, key=alarms.get)
            detected = alarms[first_alarm] - traffic.started
            candidate = execute(defs, "training", instance, request).output_for_node(
                "candidate_model"
            )
            challenger = candidate.version.version
            out(f"[{traffic.now():.0f}s] v{challenger} registered as @challenger")
            verdicts = []
            while not verdicts or verdicts[-1] not in ("promote", "rollback"):
                traffic.stop.wait(5)
                land_served(settings, traffic, instance)
                for step in tick(defs, "canary_sensor", instance, cursors).run_requests:
                    decided = execute(defs, "canary", instance, step)
                    node = decided.asset_materializations_for_node("canary_decision")[0]
                    verdicts.append(node.metadata["verdict"].value)
                    out(f"[{traffic.now():.0f}s] canary: {verdicts[-1]}")
            decided_at = traffic.now()
            if verdicts[-1] == "promote":
                while traffic.labelled_since(decided_at) < 3000:  # the minute after
                    traffic.stop.wait(1)
            after = traffic.now()
        finally:
            traffic.stop.set()
            traffic.join(timeout=30)
            launch.stop(settings)
    result.update(
        {
            "false_alarms_calm": sorted(calm_alarms),
            "accuracy_calm": traffic.accuracy(calm_s - 60, calm_s),
            "accuracy_after_change_old_champion": traffic.accuracy(onset, detected, first),
            "detected_by": first_alarm,
            "retrain_requested_by": sensor,
            "trigger": request.tags.get(TRIGGER_TAG),
            "reason": request.tags.get("driftloop/trigger_reason"),
            "detected_s_after_change": round(detected - onset, 1),
            "labelled_samples_to_detection": traffic.labelled_since(onset)
            - traffic.labelled_since(detected),
            "retrain_requested_s_after_change": round(requested - onset, 1),
            "challenger": challenger,
            "canary_verdicts": verdicts,
            "new_champion_s_after_change": round(decided_at - onset, 1),
            "accuracy_after_recovery": traffic.accuracy(decided_at, after, challenger),
            "failed_requests": traffic.failures,
        }
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--calm-s", type=float, default=120.0)
    parser.add_argument("--timeout-s", type=float, default=600.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = episode(args.seed, args.calm_s, args.timeout_s)
    keys = [k for k in result if k not in ("reason",)]
    for key in keys:
        print(f"{key:40} {result[key]}")
    print(f"{'reason':40} {result['reason']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
