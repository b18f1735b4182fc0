"""The closed-loop demo: the world drifts and driftloop notices, retrains and recovers alone.

This module only drives and watches. It starts `mlflow server`, `dagster dev` (webserver
and daemon, so the sensors really run) and `driftloop serve` as child processes on
127.0.0.1 (through `driftloop.supervisor`, as `driftloop up` does), sends simulated rows
(loan applications to classify, or Friedman rows to regress: `DemoPlan.task`) to serving
over HTTP with delayed feedback, lands the labelled rows as files (so retrains see
post-drift data), injects covariate shift and then concept drift, and records what the
loop does on its own: the monitors' retrain requests, the streaming detectors' alarms (the
error-stream sensor's ticks) and every canary decision record with its evidence (Dagster
GraphQL), the canary's weights and the serving champion (`/readyz`); `--stationary` sends
calm traffic only and counts what the loop raises on it. Its live number follows the task:
accuracy (higher is better) or RMSE (lower is better). It imports neither Dagster nor Ray,
so it measures the system from outside, as a user would see it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np
import pandas as pd

from driftloop.settings import PROJECT_ROOT, Settings, load_settings
from driftloop.simulate import DemoTask, DriftPlan, stream_for, write_batches
from driftloop.supervisor import Supervisor, services

LAND_MIN_ROWS = 60  # above the children's DRIFTLOOP_MIN_ROWS (50)
IN_FLIGHT = 16  # concurrent demo requests at most
FEEDBACK_EVERY_S = 0.5
NEVER = 10**12  # a stream position the traffic never reaches: no drift planned yet


@dataclass(frozen=True)
class DemoPlan:
    """Timings and budgets of one demo run; `QUICK` must finish in < 10 min on 2 cores."""

    rows: int = 20_000  # the first champion's training rows
    trials: int = 12  # Optuna trials per training run (the oracle gets the same)
    cv_folds: int = 3
    requests_per_s: float = 50.0  # one application each
    feedback_delay_s: float = 3.0
    land_every_s: float = 30.0  # one ingest run per file: fewer, larger files keep up
    calm_s: float = 90.0  # traffic before the drift (the drill runs inside it)
    drill: bool = True
    drift: bool = True  # False: a stationary run, calm traffic only
    concept_after_s: float = 5.0  # concept drift follows covariate shift: one episode
    recover_timeout_s: float = 420.0  # give up waiting for a new champion after this
    after_s: float = 60.0  # traffic measured once the new champion serves
    oracle: bool = True
    log_window_s: int = 5
    monitor_window_s: int = 60
    retrain_cooldown_s: int = 300  # longer than retrain + canary: one retrain per episode
    retrain_min_rows: int = 3000  # labelled rows since the change before retraining
    canary_min_samples: int = 40
    canary_steps: tuple[float, ...] = (0.25, 1.0)
    seed: int = 7
    task: DemoTask = "classification"


FULL = DemoPlan()
# Where the 172 s from onset to the new champion went on 2026-12-01 20:08 (idle machine):
# the CUSUM alarm ~20 s after the change, then 89 s waiting for 3,000 rows in files landed
# wholly after the change (a file every 30 s, each ingest run queued 6-12 s), then 57 s of
# retrain and canary. 1,200 rows are one whole file after the change, not two: a 30 s file
# held 1,460 rows on a loaded machine (2026-12-01 22:06), one short of 1,500. Files every
# 10 s were tried (21:54, load average 25-30): one ingest run per file, ~60 s each under
# that load, 44 runs queued and the retrain never got its rows; a file every 30 s keeps
# the ingest runs to two a minute. On 2026-12-02 00:42-01:00 (quiet, load average 1-3),
# with the training run starting the canary itself, a file every 20 s and 1,000 rows (one
# whole file after the change) served the new champion 101.6, 114.7 and 128.8 s after onset.
QUICK = replace(
    FULL,
    rows=10_000,
    trials=6,
    cv_folds=2,
    calm_s=60.0,
    after_s=40.0,
    land_every_s=20.0,
    retrain_min_rows=1000,
)
# Calm traffic only, for `calm_s` (`--minutes`): does the loop retrain or alarm on noise?
STATIONARY = replace(QUICK, drill=False, drift=False, oracle=False, calm_s=20 * 60.0)


@dataclass(frozen=True)
class Quality:
    """The demo's live number for its task: accuracy for classification (higher is better)
    and RMSE for regression (lower is better); the thresholds the children judge by are in
    the same metric (`child_env`)."""

    metric: Literal["accuracy", "rmse"]

    @classmethod
    def for_task(cls, task: DemoTask) -> Quality:
        return cls("rmse" if task == "regression" else "accuracy")

    @property
    def regression(self) -> bool:
        return self.metric == "rmse"

    @property
    def worst_key(self) -> str:
        """The summary's key for the worst 10 s of the drift: the lowest accuracy, the
        highest RMSE; a name that says which way "worst" lies."""
        return "max_during" if self.regression else "min_during"

    def worst(self, values: list[float]) -> float | None:
        if not values:
            return None
        return max(values) if self.regression else min(values)

    def parse(self, prediction: Any) -> str | float:
        """A served prediction as the score compares it: a label string or a float."""
        return float(prediction) if self.regression else str(prediction)

    def score(self, truth: Sequence[Any], predicted: Sequence[Any]) -> float | None:
        if len(truth) == 0:
            return None
        if self.regression:
            error = np.asarray(truth, dtype=float) - np.asarray(predicted, dtype=float)
            return float(np.sqrt(np.mean(error**2)))
        return float(np.mean(np.asarray(truth).astype(str) == np.asarray(predicted).astype(str)))

    def of(self, served: Sequence[Served]) -> float | None:
        return self.score([s.label for s in served], [s.prediction for s in served])


@dataclass
class Event:
    name: str
    t: float
    version: str | None
    value: float | None  # the live metric over the 15 s before `t`
    metric: str
    detail: dict[str, Any] | None = None  # the record behind it: an alarm, a canary decision

    def as_dict(self) -> dict[str, Any]:
        shown = {
            "event": self.name,
            "t": round(self.t, 1),
            "model_version": self.version,
            f"live_{self.metric}": _rounded(self.value),
        }
        return shown if self.detail is None else {**shown, "detail": self.detail}


@dataclass
class Served:
    """One answered request (one row): when, by which version, truth and answer."""

    t: float
    version: str
    features: dict[str, float]
    label: int | float
    prediction: str | float
    confidence: float | None = None  # the answer's top-class probability (classifiers)


@dataclass
class LoopState:
    """What the watcher has seen so far; shared by the traffic and watch threads."""

    started: float
    quality: Quality = Quality("accuracy")
    events: list[Event] = field(default_factory=list)
    served: list[Served] = field(default_factory=list)
    champion: str | None = None
    challenger: str | None = None
    weight: float = 0.0
    champions: list[str] = field(default_factory=list)
    seen_runs: dict[str, str] = field(default_factory=dict)  # run id -> last status
    retrains: list[dict[str, Any]] = field(default_factory=list)
    drift_verdicts: set[str] = field(default_factory=set)  # materialisation timestamps seen
    detections: list[float] = field(default_factory=list)  # t of each confirmed drift verdict
    first_answer: dict[str, float] = field(default_factory=dict)  # version -> t
    answers: dict[str, int] = field(default_factory=dict)  # version -> requests
    # The streaming detectors' alarms (`alarm_from_*`), each once, with its t.
    alarms: list[dict[str, Any]] = field(default_factory=list)
    # Every canary decision record (`canary_record`), with its t.
    canary: list[dict[str, Any]] = field(default_factory=list)
    estimated_alerts: list[float] = field(default_factory=list)  # t an estimated drop began
    seen: set[str] = field(default_factory=set)  # ticks and materialisations already read
    lock: threading.Lock = field(default_factory=threading.Lock)

    def now(self) -> float:
        return time.monotonic() - self.started

    def at(self, epoch_s: float) -> float:
        """A wall-clock time (a tick's, a materialisation's) in seconds since traffic began."""
        return self.now() - (time.time() - epoch_s)

    def live(self, window_s: float = 15.0, end: float | None = None) -> float | None:
        """The task's metric over the `window_s` of answered requests before `end` (now)."""
        with self.lock:
            until = self.now() if end is None else end
            recent = [s for s in self.served[-4000:] if until - window_s <= s.t <= until]
        return self.quality.of(recent)

    def record(
        self,
        name: str,
        version: str | None = None,
        at: float | None = None,
        detail: dict[str, Any] | None = None,
    ) -> Event:
        """An event now, or at `at` for one read after the fact (a sensor tick's alarm)."""
        t = self.now() if at is None else at
        value = self.live(end=t)
        event = Event(name, t, version or self.champion, value, self.quality.metric, detail)
        with self.lock:
            self.events.append(event)
        live = f"live {self.quality.metric} {_shown(value)}"
        print(f"[{event.t:6.1f}s] {name}  (champion v{self.champion}, {live})")
        return event


def _shown(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


# --- child processes ------------------------------------------------------------------------


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def free_port(preferred: int) -> int:
    """`preferred` when nothing listens there, else any free port (a UI may already run)."""
    for port in (preferred, 0):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return probe.getsockname()[1]
    raise RuntimeError("no free port on 127.0.0.1")


def child_env(home: Path, plan: DemoPlan, ports: dict[str, int], admin_key: str) -> dict[str, str]:
    """Fast settings for every child: few trials, short windows, canary promotion."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLOOP_")}
    if plan.task == "regression":  # stated, not inferred: the demo's summary is in RMSE
        env["DRIFTLOOP_TASK"] = "regression"
    env.update(
        {
            "DRIFTLOOP_HOME": str(home),
            "DAGSTER_HOME": str(home / "dagster"),
            "DRIFTLOOP_N_TRIALS": str(plan.trials),
            "DRIFTLOOP_CV_FOLDS": str(plan.cv_folds),
            "DRIFTLOOP_MIN_ROWS": "50",
            "DRIFTLOOP_SEED": str(plan.seed),
            # The demo's thresholds and summary (before/during/after) are in its live
            # metric; the simulated loans (18 % approved) would default to roc_auc.
            "DRIFTLOOP_METRIC": Quality.for_task(plan.task).metric,
            "DRIFTLOOP_PROMOTION_POLICY": "canary",
            "DRIFTLOOP_PREDICTION_LOG_WINDOW_S": str(plan.log_window_s),
            "DRIFTLOOP_MONITOR_WINDOW_S": str(plan.monitor_window_s),
            "DRIFTLOOP_MONITOR_MIN_ROWS": "100",
            "DRIFTLOOP_RETRAIN_COOLDOWN_S": str(plan.retrain_cooldown_s),
            "DRIFTLOOP_RETRAIN_MIN_ROWS": str(plan.retrain_min_rows),
            "DRIFTLOOP_CANARY_MIN_SAMPLES": str(plan.canary_min_samples),
            "DRIFTLOOP_CANARY_STEPS": json.dumps(list(plan.canary_steps)),
            # Two shared cores: queueing, not the model, dominates latency; judge quality.
            "DRIFTLOOP_CANARY_MAX_P99_MS": "60000",
            "DRIFTLOOP_LANDING_SENSOR_INTERVAL_S": "5",
            "DRIFTLOOP_CANARY_SENSOR_INTERVAL_S": "5",
            "DRIFTLOOP_ADMIN_API_KEY": admin_key,
            "DRIFTLOOP_SERVE_PORT": str(ports["serve"]),
            "DRIFTLOOP_SERVING_URL": f"http://127.0.0.1:{ports['serve']}",
            "DRIFTLOOP_DAGSTER_PORT": str(ports["dagster"]),
            "DRIFTLOOP_MLFLOW_PORT": str(ports["mlflow"]),
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


# --- the rollback drill's deliberately bad challenger -------------------------------------------


BAD_TRAINING = {"classification": "inverted labels", "regression": "mirrored targets"}


def register_bad_challenger() -> str:
    """Train on the accepted rows with inverted labels (mirrored targets for regression),
    register it as `@challenger`, and let it through the offline gate by configuration (no
    floor, any margin): only the live canary can catch it. Runs in a child process with the
    demo's environment."""
    from driftloop.candidate import register_candidate
    from driftloop.data import BatchStore, build_training_set
    from driftloop.hpo import run_search
    from driftloop.promotion import apply, decide
    from driftloop.registry import CHAMPION, Registry, configure_tracking, ensure_experiment
    from driftloop.schema import load_schema
    from driftloop.training import TRUSTED_TYPES, evaluate

    settings = load_settings().model_copy(update={"n_trials": 2})
    configure_tracking(settings)
    schema = load_schema(settings.schema_path)
    assert schema is not None, "no schema yet: train the first champion before the drill"
    rows = BatchStore(settings.batches).read_all()
    target = schema.target
    if schema.is_regression:
        # Mirrored about the mean: errors twice the target's spread, where a shuffled-target
        # model would predict the mean and err by one spread only.
        rows[target] = 2 * rows[target].mean() - rows[target]
    else:
        # Inverted labels, not shuffled ones: with imbalanced classes a shuffled-label model
        # predicts the majority class and stays deceptively close to the champion.
        first, *rest = sorted(rows[target].unique().tolist())
        rows[target] = rows[target].map({first: rest[-1], rest[-1]: first}).fillna(rows[target])
    training = build_training_set(rows, schema, settings.holdout_fraction, settings.seed)
    registry = Registry(settings.mlflow_tracking_uri, settings.model_name)
    task = "regression" if schema.is_regression else "classification"
    trigger = f"drill: trained on {BAD_TRAINING[task]}"
    experiment = ensure_experiment(settings, settings.model_name)
    search = run_search(
        training, settings, experiment, {"driftloop.trigger": trigger}, lambda _: None
    )
    candidate = register_candidate(training, search, settings, registry, trigger)
    champion = registry.by_alias(CHAMPION)
    assert champion is not None
    holdout, metric = training.xy(training.holdout), training.schema.metric
    ours = evaluate(
        registry.load_verified(candidate.version.version, TRUSTED_TYPES), *holdout, metric
    )
    theirs = evaluate(registry.load_verified(champion.version, TRUSTED_TYPES), *holdout, metric)
    decision = decide(
        candidate.version.version, (ours, None), champion.version, (theirs, None), -math.inf, None
    )
    apply(decision, registry, "canary")
    print(candidate.version.version)
    return candidate.version.version


# --- traffic ----------------------------------------------------------------------------------


class Traffic(threading.Thread):
    """Requests at a steady rate, feedback after a delay, labelled rows landed as files."""

    def __init__(
        self, state: LoopState, url: str, plan: DemoPlan, settings: Settings, model: str
    ) -> None:
        super().__init__(daemon=True, name="traffic")
        self.state, self.plan, self.settings = state, plan, settings
        self.client = httpx.Client(base_url=url, timeout=30)
        self.predict_path = f"/v1/models/{model}:predict"
        self.stream = stream_for(plan.task, seed=plan.seed + 1000, plan=DriftPlan(NEVER, NEVER))
        self.stop_event = threading.Event()
        self.pending: deque[tuple[float, list[dict[str, Any]]]] = deque()
        self.unlanded: list[dict[str, Any]] = []
        self.feedback_sent = 0.0
        self.errors: Counter[str] = Counter()  # failed calls by call and cause

    def inject(self, kind: str) -> None:
        """From the next row on: `covariate` shift of P(x), or `concept` drift of P(y | x)."""
        plan, at = self.stream.plan, self.stream.position
        if kind == "covariate":
            plan = replace(plan, covariate_shift_at=at)
        else:
            plan = replace(plan, concept_drift_at=at)
        self.stream.plan = plan

    def run(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        period = 1 / self.plan.requests_per_s
        last_land = time.monotonic()
        next_at = time.monotonic()
        in_flight: set[Any] = set()
        # Requests in flight keep the rate steady when a busy machine slows answers.
        with ThreadPoolExecutor(max_workers=IN_FLIGHT, thread_name_prefix="request") as pool:
            while not self.stop_event.is_set():
                in_flight = {f for f in in_flight if not f.done()}
                if len(in_flight) < IN_FLIGHT:
                    in_flight.add(pool.submit(self._one_request, *next(self.stream)))
                self._send_due_feedback()
                # Ingest rejects batches under DRIFTLOOP_MIN_ROWS: land whole batches only.
                if (
                    time.monotonic() - last_land >= self.plan.land_every_s
                    and len(self.unlanded) >= LAND_MIN_ROWS
                ):
                    self._land()
                    last_land = time.monotonic()
                next_at = max(next_at + period, time.monotonic() - 1)
                time.sleep(max(0.0, next_at - time.monotonic()))
        self.client.close()

    def _one_request(self, features: dict[str, float], label: int | float) -> None:
        # One row per request: feedback is per request id, so a request's label (the
        # observed value for regression) must belong to exactly one row.
        try:
            response = self.client.post(self.predict_path, json={"instances": [features]})
            response.raise_for_status()
        except httpx.HTTPError as error:
            self.errors[f"predict {_cause(error)}"] += 1
            return
        body = response.json()
        version = str(body["model_version"])
        prediction = self.state.quality.parse(body["predictions"][0])
        probabilities = body.get("probabilities")
        confidence = max(probabilities[0]) if probabilities else None
        served = Served(self.state.now(), version, features, label, prediction, confidence)
        with self.state.lock:
            self.state.served.append(served)
            self.state.first_answer.setdefault(version, served.t)
            self.state.answers[version] = self.state.answers.get(version, 0) + 1
        due = time.monotonic() + self.plan.feedback_delay_s
        with self.state.lock:
            self.pending.append((due, [{"request_id": body["request_id"], "label": label}]))
            self.unlanded.append({**features, "label": label})

    def _send_due_feedback(self) -> None:
        """At most one feedback call per FEEDBACK_EVERY_S: one label per request would
        double the HTTP calls this loop makes and slow the traffic it must keep steady."""
        if time.monotonic() - self.feedback_sent < FEEDBACK_EVERY_S:
            return
        self.feedback_sent = time.monotonic()
        due: list[dict[str, Any]] = []
        with self.state.lock:
            while self.pending and self.pending[0][0] <= time.monotonic():
                due.extend(self.pending.popleft()[1])
        if due:
            try:
                self.client.post("/v1/feedback", json=due).raise_for_status()
            except httpx.HTTPError as error:
                self.errors[f"feedback {_cause(error)}"] += 1

    def _land(self) -> None:
        if not self.unlanded:
            return
        with self.state.lock:
            frame = pd.DataFrame.from_records(self.unlanded)
            self.unlanded = []
        self.settings.landing.write_frame(  # published whole: the sensor never sees half a file
            f"traffic-{datetime.now(UTC):%Y%m%dT%H%M%S%f}.parquet",
            frame.rename(columns={"label": self.settings.target_column}),
        )


def _cause(error: httpx.HTTPError) -> str:
    """An HTTP status, or the kind of transport failure (a timeout, a refused connection)."""
    if isinstance(error, httpx.HTTPStatusError):
        return str(error.response.status_code)
    return type(error).__name__


# --- watching the loop ------------------------------------------------------------------------

RUNS_QUERY = """
query TrainingRuns {
  runsOrError(filter: {pipelineName: "training"}) {
    ... on Runs { results { runId status tags { key value } } }
  }
}
"""

DRIFT_QUERY = """
query DriftVerdicts {
  assetOrError(assetKey: {path: ["feature_drift_report"]}) {
    ... on Asset {
      assetMaterializations(limit: 10) {
        timestamp
        metadataEntries { label ... on BoolMetadataEntry { boolValue } }
      }
    }
  }
}
"""


CANARY_QUERY = """
query CanaryDecisions {
  assetOrError(assetKey: {path: ["canary_decision"]}) {
    ... on Asset {
      assetMaterializations(limit: 20) {
        timestamp
        runId
        metadataEntries {
          label
          ... on TextMetadataEntry { text }
          ... on FloatMetadataEntry { floatValue }
          ... on IntMetadataEntry { intValue }
          ... on BoolMetadataEntry { boolValue }
        }
      }
    }
  }
}
"""

ESTIMATE_QUERY = """
query EstimatedDrops {
  assetOrError(assetKey: {path: ["live_model_quality"]}) {
    ... on Asset {
      assetMaterializations(limit: 10) {
        timestamp
        metadataEntries { label ... on BoolMetadataEntry { boolValue } }
      }
    }
  }
}
"""

# The error-stream sensor's recent ticks: an alarm is in the tick's log (`Alarm`'s repr),
# in the cursor's pending entry while its retrain waits, and in the retrain's tags.
DETECTOR_QUERY = """
query DetectorTicks($after: Float) {
  sensorOrError(sensorSelector: {repositoryLocationName: "driftloop",
      repositoryName: "__repository__", sensorName: "error_stream_sensor"}) {
    ... on Sensor {
      sensorState {
        ticks(limit: 15, afterTimestamp: $after) {
          tickId timestamp status cursor logEvents { events { message } }
        }
      }
    }
  }
}
"""
TICK_LOOKBACK_S = 180.0  # ticks come every 15 s: a few missed polls lose none
FINAL_TICKS = ("SKIPPED", "SUCCESS", "FAILURE")
ALARM_LOG = "error-stream alarm: "
# pipelines/monitor_sensors.py's names for an alarm on its pending entry and retrain tags.
DETECTOR_TAG = "driftloop/detector"
DETECTED_AFTER_TAG = "driftloop/detected_after_samples"
CHANGE_SAMPLE_TAG = "driftloop/change_at_sample"
CHANGE_AT_TAG = "driftloop/change_at"
# The canary record's numbers the timeline and summary keep.
CANARY_FIELDS = (
    "challenger_version",
    "champion_version",
    "verdict",
    "reason",
    "weight",
    "next_weight",
    "metric",
    "challenger_n",
    "champion_n",
    "difference",
    "ci_low",
    "ci_high",
    "probability_better",
)


def alarm_from_log(message: str) -> dict[str, Any] | None:
    """The alarm in an `error_stream_sensor` tick's log line (a `streaming.Alarm` repr,
    numbers possibly as `np.float64(...)`); None for any other line."""
    if ALARM_LOG not in message:
        return None
    text = message.split(ALARM_LOG, 1)[1]
    fields = dict(re.findall(r"(\w+)=(?:np\.\w+\()?'?([^,)']*)", text))
    try:
        return {
            "detector": fields["detector"],
            "samples": int(fields["samples"]),
            "change_sample": int(fields["change_sample"]),
            "change_at": float(fields["change_at"]),
            "before": round(float(fields["before"]), 4),
            "after": round(float(fields["after"]), 4),
        }
    except (KeyError, ValueError):
        return None


def alarm_from_tags(tags: dict[str, str]) -> dict[str, Any] | None:
    """The alarm as the sensor's pending entry and the retrain it starts carry it."""
    if DETECTOR_TAG not in tags:
        return None
    try:
        return {
            "detector": tags[DETECTOR_TAG],
            "samples": int(tags[DETECTED_AFTER_TAG]),
            "change_sample": int(tags[CHANGE_SAMPLE_TAG]),
            "change_at": float(tags[CHANGE_AT_TAG]),
        }
    except (KeyError, ValueError):
        return None


def metadata_values(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Dagster metadata entries, as GraphQL gives them, as plain values by label."""
    values: dict[str, Any] = {}
    for entry in entries:
        for key in ("text", "floatValue", "intValue", "boolValue"):
            if key in entry:
                values[entry["label"]] = entry[key]
                break
    return values


def canary_record(values: dict[str, Any]) -> dict[str, Any] | None:
    """A `canary_decision` materialisation's decision record; None when no canary ran."""
    if values.get("verdict") in (None, "idle"):
        return None
    return {k: values[k] for k in CANARY_FIELDS if values.get(k) is not None}


def canary_event(record: dict[str, Any]) -> str:
    """A decision record as one timeline line: verdict, share, samples per arm, evidence."""
    line = f"canary v{record.get('challenger_version')}: {record['verdict']}"
    if "weight" in record:
        line += f" (weight {float(record['weight']):.0%})"
    if "challenger_n" in record:
        line += f", n {record['challenger_n']} vs {record.get('champion_n')}"
    if "difference" in record:
        line += f", gain {record['difference']:+.3f}"
        if "ci_low" in record and "ci_high" in record:
            line += f" in [{record['ci_low']:+.3f}, {record['ci_high']:+.3f}]"
    return f"{line}: {str(record.get('reason', ''))[:70]}"


class Watcher(threading.Thread):
    """Polls serving's `/readyz` and Dagster's GraphQL; turns changes into events."""

    def __init__(self, state: LoopState, serve_url: str, dagster_url: str, api_key: str) -> None:
        super().__init__(daemon=True, name="watcher")
        self.state = state
        # With an admin key configured, `/readyz` names the models only to a viewer or admin.
        self.serve = httpx.Client(base_url=serve_url, timeout=10, headers={"X-API-Key": api_key})
        self.dagster = httpx.Client(base_url=dagster_url, timeout=20)
        self.stop_event = threading.Event()
        self.weight_zero_at: dict[str, float] = {}  # challenger version -> t its weight hit 0
        self.flagged = False  # the newest verdict's estimated drop flag

    def run(self) -> None:
        tick = 0
        while not self.stop_event.is_set():
            polls = [self.poll_serving]
            if tick % 3 == 0:
                # Detectors before runs: an alarm is dated by its tick, not by its retrain.
                polls += [
                    self.poll_detectors,
                    self.poll_runs,
                    self.poll_drift,
                    self.poll_canary,
                    self.poll_estimates,
                ]
            for poll in polls:  # a busy server answers next time
                with contextlib.suppress(httpx.HTTPError, ValueError, KeyError, TypeError):
                    poll()
            tick += 1
            self.stop_event.wait(1.0)

    def _graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        body = self.dagster.post("/graphql", json={"query": query, "variables": variables or {}})
        return body.json().get("data") or {}

    def note_alarm(self, alarm: dict[str, Any], epoch_s: float) -> None:
        """An alarm seen for the first time (by detector and sample) becomes an event."""
        key = f"alarm {alarm['detector']} {alarm['samples']} {alarm['change_sample']}"
        state = self.state
        if key in state.seen:
            return
        state.seen.add(key)
        delay = alarm["samples"] - alarm["change_sample"]
        entry = {
            **alarm,
            "t": round(state.at(epoch_s), 1),
            "change_t": round(state.at(alarm["change_at"]), 1),
            "samples_after_change": delay,
        }
        state.alarms.append(entry)
        state.record(
            f"error-stream alarm: {alarm['detector']}, {delay} labelled samples after the "
            f"change it dates at t {entry['change_t']}",
            at=entry["t"],
            detail=entry,
        )

    def poll_detectors(self) -> None:
        """The streaming detectors' alarms, from `error_stream_sensor`'s ticks."""
        data = self._graphql(DETECTOR_QUERY, {"after": time.time() - TICK_LOOKBACK_S})
        sensor = (data.get("sensorOrError") or {}).get("sensorState") or {}
        for tick in sorted(sensor.get("ticks") or [], key=lambda t: t["timestamp"]):
            if tick["status"] not in FINAL_TICKS or f"tick {tick['tickId']}" in self.state.seen:
                continue
            self.state.seen.add(f"tick {tick['tickId']}")
            events = (tick.get("logEvents") or {}).get("events") or []
            found = [a for a in (alarm_from_log(e["message"]) for e in events) if a]
            pending = json.loads(tick.get("cursor") or "{}").get("pending") or {}
            waiting = alarm_from_tags(pending.get("tags") or {})
            for alarm in found or ([waiting] if waiting else []):
                self.note_alarm(alarm, tick["timestamp"])

    def poll_canary(self) -> None:
        """Every canary decision record, with its samples per arm and its evidence."""
        data = self._graphql(CANARY_QUERY)
        found = (data.get("assetOrError") or {}).get("assetMaterializations") or []
        for materialization in reversed(found):  # oldest first
            key = f"canary {materialization['runId']} {materialization['timestamp']}"
            if key in self.state.seen:
                continue
            self.state.seen.add(key)
            record = canary_record(metadata_values(materialization["metadataEntries"]))
            if record is None:
                continue
            record["t"] = round(self.state.at(int(materialization["timestamp"]) / 1000), 1)
            self.state.canary.append(record)
            self.state.record(
                canary_event(record),
                record.get("challenger_version"),
                at=record["t"],
                detail=record,
            )

    def poll_estimates(self) -> None:
        """Episodes of the label-free estimate under the holdout (an alert each)."""
        data = self._graphql(ESTIMATE_QUERY)
        found = (data.get("assetOrError") or {}).get("assetMaterializations") or []
        for materialization in reversed(found):
            key = f"estimate {materialization['timestamp']}"
            if key in self.state.seen:
                continue
            self.state.seen.add(key)
            values = metadata_values(materialization["metadataEntries"])
            flagged = bool(values.get("estimated_drop_flagged"))
            if flagged and not self.flagged:
                at = self.state.at(int(materialization["timestamp"]) / 1000)
                self.state.estimated_alerts.append(round(at, 1))
                self.state.record("estimated accuracy fell below the holdout's (alert)", at=at)
            self.flagged = flagged

    def poll_serving(self) -> None:
        ready = self.serve.get("/readyz").json()
        state = self.state
        champion = (ready.get("champion") or {}).get("version")
        challenger = (ready.get("challenger") or {}).get("version")
        weight = float(ready.get("canary_weight") or 0.0)
        if champion and champion != state.champion:
            state.champion = champion
            state.champions.append(champion)
            state.record(f"v{champion} serves as @champion", champion)
        who = challenger or state.challenger  # the version the weight belonged to
        if challenger != state.challenger:
            if challenger:
                state.record(f"v{challenger} is @challenger", challenger)
            elif state.challenger and state.challenger != champion:
                state.record(f"v{state.challenger} no longer @challenger", state.challenger)
            state.challenger = challenger
        if weight != state.weight:
            state.record(f"canary weight {state.weight:.0%} -> {weight:.0%} (v{who})", who)
            if weight == 0.0 and who:
                self.weight_zero_at.setdefault(who, state.now())
            state.weight = weight

    def poll_drift(self, prime: bool = False) -> None:
        """New drift verdicts of the monitor; the first confirmed one is the detection."""
        body = self.dagster.post("/graphql", json={"query": DRIFT_QUERY}).json()
        asset = (body.get("data") or {}).get("assetOrError") or {}
        found = asset.get("assetMaterializations") or []
        for materialization in reversed(found):  # oldest first
            stamp = materialization["timestamp"]
            if stamp in self.state.drift_verdicts:
                continue
            self.state.drift_verdicts.add(stamp)
            entries = {e["label"]: e.get("boolValue") for e in materialization["metadataEntries"]}
            if prime or not entries.get("drift_confirmed"):
                continue
            at = self.state.now() - (time.time() - int(stamp) / 1000)
            self.state.detections.append(at)
            if len(self.state.detections) == 1 or at - self.state.detections[-2] > 120:
                self.state.record("drift confirmed by the monitor")

    def poll_runs(self, prime: bool = False) -> None:
        """New and finished training runs; `prime` only notes the runs that already exist."""
        body = self.dagster.post("/graphql", json={"query": RUNS_QUERY}).json()
        runs = body["data"]["runsOrError"]["results"]
        for run in reversed(runs):  # oldest first
            tags = {t["key"]: t["value"] for t in run["tags"]}
            trigger = tags.get("driftloop/trigger", "manual")
            before = self.state.seen_runs.get(run["runId"])
            if before == run["status"]:
                continue
            self.state.seen_runs[run["runId"]] = run["status"]
            if prime:
                continue
            if before is None:
                reason = tags.get("driftloop/trigger_reason", "")
                alarm = alarm_from_tags(tags)
                self.state.retrains.append(
                    {
                        "run_id": run["runId"],
                        "trigger": trigger,
                        "reason": reason,
                        "t": self.state.now(),
                        "detector": None if alarm is None else alarm["detector"],
                    }
                )
                if alarm is not None:  # started at once: no tick kept it pending
                    self.note_alarm(alarm, time.time())
                self.state.record(f"training run requested ({trigger}: {reason[:80]})")
            if run["status"] in ("SUCCESS", "FAILURE", "CANCELED"):
                self.state.record(f"training run {run['runId'][:8]} {run['status'].lower()}")


# --- the demo ---------------------------------------------------------------------------------


def run_demo(
    plan: DemoPlan,
    base: Settings,
    json_path: Path | None = None,
    keep_ui: bool = False,
    out: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the loop end to end; returns the summary (also written to `json_path`)."""
    home = base.home / "demo" / datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    (home / "dagster").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(PROJECT_ROOT / "dagster.yaml", home / "dagster" / "dagster.yaml")
    ports = {
        "serve": free_port(base.serve_port),
        "dagster": free_port(base.dagster_port),
        "mlflow": free_port(base.mlflow_port),
    }
    env = child_env(home, plan, ports, secrets.token_urlsafe(32))
    settings = Settings(home=home).model_copy(
        update={
            "dagster_port": ports["dagster"],
            "mlflow_port": ports["mlflow"],
            "serve_port": ports["serve"],
        }
    )
    bin_dir = Path(sys.executable).parent
    children = Supervisor(logs, env)
    if threading.current_thread() is threading.main_thread():
        # The servers run in sessions of their own, out of reach of a signal to ours: a
        # SIGTERM (a CI cancel, `kill`) must still reach the `finally` that stops them.
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    state = LoopState(started=time.monotonic(), quality=Quality.for_task(plan.task))
    out(f"demo home {home} (logs in {logs}), task {plan.task}")
    try:
        return _loop(plan, settings, env, bin_dir, children, state, json_path, keep_ui, out)
    finally:
        children.stop()


def _loop(
    plan: DemoPlan,
    settings: Settings,
    env: dict[str, str],
    bin_dir: Path,
    children: Supervisor,
    state: LoopState,
    json_path: Path | None,
    keep_ui: bool,
    out: Callable[[str], None],
) -> dict[str, Any]:
    home = settings.home
    servers = services(settings, home / "dagster")
    urls = {name: server.url for name, server in servers.items()}
    children.start_service(servers["mlflow"])
    stream = stream_for(plan.task, seed=plan.seed)
    out(f"[setup] simulating {plan.rows} {stream.rows_are} and training the first champion")
    write_batches(stream, plan.rows, 5_000, settings.landing, settings.target_column)
    started = time.monotonic()
    trained = subprocess.run(
        [str(bin_dir / "driftloop"), "train"], env=env, cwd=home, capture_output=True, text=True
    )
    (home / "logs" / "first-train.log").write_text(trained.stdout + trained.stderr)
    if trained.returncode != 0:
        raise RuntimeError(f"first training failed: {trained.stderr.strip()[-300:]}")
    out(f"[setup] first champion trained in {time.monotonic() - started:.0f}s")
    drill_proc = None
    if plan.drill:  # trains while the servers start; the canary takes it from there
        out(f"[setup] drill: training a challenger on {BAD_TRAINING[plan.task]}")
        drill_proc = subprocess.Popen(
            [
                str(bin_dir / "python"),
                "-c",
                "import cli.demo as d; d.register_bad_challenger()",
            ],
            env=env,
            cwd=home,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    children.start_service(servers["dagster"])
    children.start_service(servers["serve"])
    out("[setup] starting Ray Serve, the Dagster webserver + daemon and the MLflow UI")
    children.wait_healthy("serve")
    children.wait_healthy("dagster")
    state.started = time.monotonic()
    watcher = Watcher(state, urls["serve"], urls["dagster"], env["DRIFTLOOP_ADMIN_API_KEY"])
    # Healthy is not yet serving the champion on a busy machine (measured: 6 s later); the
    # first champion must be known, or any champion would count as the recovery.
    deadline = time.monotonic() + 120
    while state.champion is None and time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
            watcher.poll_serving()
        if state.champion is None:
            time.sleep(1)
    watcher.poll_runs(prime=True)
    watcher.poll_drift(prime=True)
    traffic = Traffic(state, urls["serve"], plan, settings, settings.model_name)
    traffic.start()
    watcher.start()
    first = state.champion
    state.record("traffic started (calm phase)")
    try:
        drill = _calm_phase(plan, state, watcher, drill_proc, home, out)
        if plan.drift:
            onset, onset_index, concept, serving_at = _drift_phase(
                plan, state, traffic, (first, drill["version"]), out
            )
    finally:
        traffic.stop_event.set()
        traffic.join(timeout=30)
        watcher.stop_event.set()
        watcher.join(timeout=30)
    for poll in (watcher.poll_detectors, watcher.poll_runs, watcher.poll_canary):
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError, TypeError):
            poll()  # what happened in the last seconds of traffic
    estimator = None if state.quality.regression else _Estimator.from_registry(settings)
    if not plan.drift:
        summary = summarise_stationary(state, first)
    else:
        summary = _summarise(
            plan, settings, state, first, onset, onset_index, concept, serving_at, estimator
        )
        summary["rollback_s"], summary["rollback_requests"] = drill["seconds"], drill["requests"]
        outcomes = canary_outcomes(state)
        summary["canary_samples_to_decision"] = {
            "drill": outcomes.get(drill["version"] or ""),
            "recovery": outcomes.get(state.champion or "") if serving_at is not None else None,
        }
    _print_timeline(state, out)
    plot = home / f"{state.quality.metric}.png"
    _plot(state, plot, estimator)
    out(f"plot: {plot}")
    target = json_path or home / "summary.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(summary, indent=2))
    out(f"summary: {target}")
    out(json.dumps({k: v for k, v in summary.items() if k != "events"}, indent=2))
    if traffic.errors:
        causes = ", ".join(f"{cause}: {n}" for cause, n in traffic.errors.most_common())
        out(f"note: {traffic.errors.total()} requests or feedback posts failed ({causes})")
    if keep_ui:
        out(f"Dagster UI: {urls['dagster']}\nMLflow UI: {urls['mlflow']}\nserving: {urls['serve']}")
        out("Ctrl-C stops everything.")
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return summary


def _drift_phase(
    plan: DemoPlan,
    state: LoopState,
    traffic: Traffic,
    before: tuple[str | None, str | None],
    out: Callable[[str], None],
) -> tuple[float, int, float, float | None]:
    """Covariate shift, then concept drift; wait for a champion that is neither the first
    nor the drill's (`before`), then measure it. Returns onset, its request index, the
    concept change and when the new champion served (None: it never did)."""
    state.record("covariate shift injected")
    onset = state.now()
    onset_index = len(state.served)
    traffic.inject("covariate")
    _progress_until(state, lambda: state.now() >= onset + plan.concept_after_s, out, 60)
    traffic.inject("concept")
    state.record(f"concept drift injected ({traffic.stream.concept_change})")
    concept = state.now()
    recovered = _progress_until(
        state, lambda: state.champion not in before, out, plan.recover_timeout_s
    )
    serving_at = state.now() if recovered else None
    if serving_at is not None:
        state.record("new champion serves; measuring recovery")
        _progress_until(state, lambda: state.now() >= serving_at + plan.after_s, out, 3600)
    return onset, onset_index, concept, serving_at


def _progress_until(
    state: LoopState, done: Callable[[], bool], out: Callable[[str], None], timeout_s: float
) -> bool:
    """Wait for `done`, printing a status line every 10 s; False on timeout."""
    deadline = time.monotonic() + timeout_s
    last = 0.0
    while time.monotonic() < deadline:
        if done():
            return True
        if time.monotonic() - last >= 10:
            last = time.monotonic()
            live = _shown(state.live())
            canary = f", canary v{state.challenger} {state.weight:.0%}" if state.challenger else ""
            out(
                f"[{state.now():6.1f}s] champion v{state.champion}{canary}, live "
                f"{state.quality.metric} {live}, {len(state.served)} requests"
            )
        time.sleep(0.5)
    return False


def _calm_phase(
    plan: DemoPlan,
    state: LoopState,
    watcher: Watcher,
    drill_proc: subprocess.Popen[str] | None,
    home: Path,
    out: Callable[[str], None],
) -> dict[str, Any]:
    """Calm traffic; with the drill, a bad challenger the canary must roll back."""
    calm_end = state.now() + plan.calm_s
    drill: dict[str, Any] = {"version": None, "seconds": None, "requests": None}
    if drill_proc is not None:
        made = drill_proc.communicate()
        (home / "logs" / "drill.log").write_text(made[0] + made[1])
        if drill_proc.returncode != 0:
            out(f"drill skipped: {made[1].strip()[-200:]}")
        else:
            bad = made[0].strip().splitlines()[-1]
            drill["version"] = bad
            state.record(f"drill: v{bad} registered as @challenger (gate opened by configuration)")
            gone = _progress_until(
                state,
                lambda: bad in watcher.weight_zero_at and bad != state.challenger,
                out,
                240,
            )
            first = state.first_answer.get(bad)
            if gone and first is not None:
                drill["seconds"] = round(watcher.weight_zero_at[bad] - first, 1)
                drill["requests"] = state.answers.get(bad, 0)
                state.record(
                    f"drill: v{bad} rolled back {drill['seconds']}s after its first canary "
                    f"request, having answered {drill['requests']} requests"
                )
            else:
                out("drill: the bad challenger was not rolled back in time")
    _progress_until(state, lambda: state.now() >= calm_end, out, plan.calm_s + 60)
    return drill


# --- the numbers ------------------------------------------------------------------------------


def _summarise(
    plan: DemoPlan,
    settings: Settings,
    state: LoopState,
    first: str | None,
    onset: float,
    onset_index: int,
    concept: float,
    serving_at: float | None,
    estimator: _Estimator | None = None,
) -> dict[str, Any]:
    """The issue's summary keys; times are seconds since the traffic started."""
    served, quality = state.served, state.quality
    monitor_retrains = [r["t"] for r in state.retrains if r["trigger"] in MONITOR_TRIGGERS]
    alarm = next((a for a in sorted(state.alarms, key=lambda a: a["t"]) if a["t"] >= onset), None)
    alarmed = [] if alarm is None else [alarm["t"]]
    signals = state.detections + monitor_retrains + alarmed
    detected = min((t for t in signals if t >= onset), default=None)
    delay = None
    if detected is not None:
        delay = sum(1 for s in served[onset_index:] if s.t + plan.feedback_delay_s <= detected)
    before = [s for s in served[:onset_index] if s.version == first and s.t >= onset - 60]
    end = serving_at if serving_at is not None else state.now()
    during = [s for s in served[onset_index:] if s.t < end]
    buckets = [
        quality.of([s for s in during if t <= s.t < t + 10]) for t in np.arange(onset, end, 10.0)
    ]
    post = [s for s in served[onset_index:] if s.t >= concept]
    if serving_at is not None:
        after = [s for s in post if s.t >= serving_at]
        learn = [s for s in post if s.t < serving_at]
    else:  # never recovered: judge the last third of the drifted traffic
        cut = len(post) * 2 // 3
        learn, after = post[:cut], post[cut:]
    static, oracle = _counterfactuals(plan, settings, quality, first, learn, after)
    versions = [e.version for e in state.events if e.name.endswith("serves as @champion")]
    first_retrain = next((r for r in state.retrains if r["t"] >= onset), None)

    def unchanged(s: Served) -> bool:  # answered by the champion from before the drift
        return first is None or s.version == first

    return {
        "drift_onset_s": round(onset, 1),
        "detected_at_s": None if detected is None else round(detected, 1),
        "detection_delay_samples": delay,
        "new_champion_serving_at_s": None if serving_at is None else round(serving_at, 1),
        quality.metric: {
            "before": _rounded(quality.of(before)),
            quality.worst_key: _rounded(quality.worst([b for b in buckets if b is not None])),
            "after": _rounded(
                quality.of([s for s in after if s.version == state.champion])
                if serving_at is not None
                else quality.of(after)
            ),
            "static_after": static,
            "oracle_after": oracle,
        },
        # Realized and label-free accuracy of the first champion in each phase: the
        # estimate follows the covariate shift and misses the concept change.
        "estimated_accuracy": None
        if estimator is None
        else {
            phase: {"realized": _rounded(quality.of(rows)), "estimated": estimator.of(rows)}
            for phase, rows in (
                ("before", before),
                ("covariate_shift", [s for s in during if s.t < concept and unchanged(s)]),
                ("concept_drift", [s for s in learn if unchanged(s)]),
            )
        },
        "detected_by": _detected_by(plan, state, onset, concept, alarm, first_retrain, delay),
        # What the monitors, detectors and the estimate raised on calm traffic, before any
        # drift was injected.
        "false_alarms": false_alarms(state, until=onset),
        "detector_alarms": len(state.alarms),
        "retrains": retrains_by_trigger(state),
        "rollback_s": None,
        "rollback_requests": None,
        "canary_samples_to_decision": None,
        "events": [e.as_dict() for e in sorted(state.events, key=lambda e: e.t)],
        "champion_versions": [v for v in versions if v is not None],
    }


MONITOR_TRIGGERS = ("drift", "quality")  # the retrains monitors ask for (not manual, drill)
ESTIMATED_REASON = "accuracy estimated without labels"  # a retrain for an estimated drop


def _detected_by(
    plan: DemoPlan,
    state: LoopState,
    onset: float,
    concept: float,
    alarm: dict[str, Any] | None,
    first_retrain: dict[str, Any] | None,
    delay: int | None,
) -> dict[str, Any] | None:
    """The first streaming detector to fire after onset, else the first retrain's trigger.

    A detector counts its own labelled samples from the change it estimates to its alarm;
    `labels_sent_since_change` is the demo's count from the true (concept) change, every
    label posted by then (an upper bound on what the detector could have read).
    """
    if alarm is not None:
        sent = sum(
            1 for s in state.served if concept <= s.t and s.t + plan.feedback_delay_s <= alarm["t"]
        )
        return {
            "source": "error_stream_sensor",
            "detector": alarm["detector"],
            "labelled_samples": alarm["samples_after_change"],
            "labels_sent_since_change": sent,
            "t": alarm["t"],
            "s_after_onset": round(alarm["t"] - onset, 1),
            "change_estimated_at_t": alarm["change_t"],
            "change_at_t": round(concept, 1),
        }
    if first_retrain is None:
        return None
    return {
        "source": "monitor",
        "trigger": first_retrain["trigger"],
        "reason": first_retrain["reason"],
        "labelled_samples_after_onset": delay,
    }


def false_alarms(state: LoopState, until: float | None = None) -> dict[str, int]:
    """What the loop raised (before `until`, if given), counted once per cause: each
    detector alarm, each estimated-drop alert, and each monitor retrain that neither stands
    for (a drift verdict, a quality drop at a change point, the live metric under the
    holdout). `total` sums them."""

    def before(t: float) -> bool:
        return until is None or t < until

    retrains = [
        r
        for r in state.retrains
        if before(r["t"])
        and r["trigger"] in MONITOR_TRIGGERS
        and not r.get("detector")
        and not str(r["reason"]).startswith(ESTIMATED_REASON)
    ]
    counts = {
        "detector_alarms": sum(1 for a in state.alarms if before(a["t"])),
        "estimated_drop_alerts": sum(1 for t in state.estimated_alerts if before(t)),
        "monitor_retrains": len(retrains),
    }
    return {**counts, "total": sum(counts.values())}


def canary_outcomes(state: LoopState) -> dict[str, dict[str, Any]]:
    """Each finished canary by challenger version: its verdict, the labelled samples per
    arm the deciding record judged, how many checks it took, and the requests the
    challenger answered until then."""
    outcomes: dict[str, dict[str, Any]] = {}
    for record in sorted(state.canary, key=lambda r: r["t"]):
        version = record.get("challenger_version")
        if version is None or version in outcomes:
            continue
        if record["verdict"] not in ("promote", "rollback"):
            continue
        judged = [
            r
            for r in state.canary
            if r.get("challenger_version") == version and "challenger_n" in r
        ]
        outcomes[version] = {
            "verdict": record["verdict"],
            "challenger_n": record.get("challenger_n"),
            "champion_n": record.get("champion_n"),
            "checks": len(judged),
            "requests": sum(1 for s in state.served if s.version == version and s.t <= record["t"]),
            "t": record["t"],
        }
    return outcomes


def retrains_by_trigger(state: LoopState) -> dict[str, int]:
    return dict(Counter(r["trigger"] for r in state.retrains))


def summarise_stationary(state: LoopState, first: str | None) -> dict[str, Any]:
    """A run on calm traffic only: every retrain and alarm is a false one; per hour of
    traffic so that runs of any length compare."""
    served, quality = state.served, state.quality
    hours = (served[-1].t - served[0].t) / 3600 if len(served) > 1 else 0.0
    alarms = false_alarms(state)
    versions = [e.version for e in state.events if e.name.endswith("serves as @champion")]
    return {
        "mode": "stationary",
        "minutes": round(hours * 60, 1),
        "requests": len(served),
        quality.metric: _rounded(quality.of([s for s in served if s.version == first])),
        "retrains": retrains_by_trigger(state),
        "false_alarms": alarms,
        "alarms_per_hour": round(alarms["total"] / hours, 2) if hours else None,
        "detector_alarms": len(state.alarms),
        "drift_verdicts_confirmed": len(state.detections),
        "events": [e.as_dict() for e in sorted(state.events, key=lambda e: e.t)],
        "champion_versions": [v for v in versions if v is not None],
    }


class _Estimator:
    """Label-free accuracy over answered requests, each row by the calibration registered
    with its version (`driftloop.estimation`), as the monitor computes it."""

    def __init__(self, calibration_of: Callable[[str], np.ndarray | None]) -> None:
        self.calibration_of = calibration_of
        self.calibrations: dict[str, np.ndarray | None] = {}

    @classmethod
    def from_registry(cls, settings: Settings) -> _Estimator:
        from driftloop.estimation import TAG_CALIBRATION, parse_calibration
        from driftloop.registry import Registry, configure_tracking

        configure_tracking(settings)
        registry = Registry(settings.mlflow_tracking_uri, settings.model_name)
        return cls(lambda v: parse_calibration(registry.version(v).tags.get(TAG_CALIBRATION)))

    def of(self, served: Sequence[Served]) -> float | None:
        """Mean calibrated confidence over `served` (each row by its version's map); None
        with fewer calibrated rows than the monitor needs."""
        from driftloop.estimation import GRID, MIN_ESTIMATE_ROWS

        calibrated = []
        for s in served:
            if s.version not in self.calibrations:
                self.calibrations[s.version] = self.calibration_of(s.version)
            calibration = self.calibrations[s.version]
            if calibration is not None and s.confidence is not None:
                calibrated.append(float(np.interp(s.confidence, GRID, calibration)))
        return (
            _rounded(float(np.mean(calibrated))) if len(calibrated) >= MIN_ESTIMATE_ROWS else None
        )


def _counterfactuals(
    plan: DemoPlan,
    settings: Settings,
    quality: Quality,
    first: str | None,
    learn: list[Served],
    after: list[Served],
) -> tuple[float | None, float | None]:
    """The first champion frozen (static) and a model searched on post-drift rows (oracle),
    both scored in the task's metric on the same post-recovery traffic."""
    if not after or first is None:
        return None, None
    from driftloop.data import BATCH_COLUMN, build_training_set
    from driftloop.hpo import run_search
    from driftloop.registry import Registry, configure_tracking, ensure_experiment
    from driftloop.schema import load_schema
    from driftloop.training import TRUSTED_TYPES, limited_threads, make_model

    budget = settings.model_copy(update={"n_trials": plan.trials, "cv_folds": plan.cv_folds})
    configure_tracking(budget)
    schema = load_schema(budget.schema_path)
    assert schema is not None
    x_after = pd.DataFrame.from_records([s.features for s in after])[schema.feature_names]
    y_after = np.array([s.label for s in after])
    registry = Registry(budget.mlflow_tracking_uri, budget.model_name)
    static_model = registry.load_verified(first, TRUSTED_TYPES)
    static = quality.score(y_after, static_model.predict(x_after))
    oracle = None
    if plan.oracle and len(learn) >= 200:
        rows = pd.DataFrame.from_records([{**s.features, schema.target: s.label} for s in learn])
        rows[BATCH_COLUMN] = "oracle"
        training = build_training_set(rows, schema, budget.holdout_fraction, budget.seed)
        experiment = ensure_experiment(budget, f"{budget.model_name}-oracle")
        search = run_search(training, budget, experiment, {"driftloop.trigger": "oracle"}, print)
        with limited_threads(budget.train_threads):
            model = make_model(search.best_params, schema, budget.seed).fit(
                *training.xy(training.train)
            )
        oracle = quality.score(y_after, model.predict(x_after))
    return _rounded(static), _rounded(oracle)


def _print_timeline(state: LoopState, out: Callable[[str], None]) -> None:
    out("\ntimeline")
    live = "live acc" if state.quality.metric == "accuracy" else f"live {state.quality.metric}"
    out(f"{'t (s)':>7}  {'version':>7}  {live:>9}  event")
    for event in sorted(state.events, key=lambda e: e.t):  # alarms are dated by their tick
        version = ("v" + event.version) if event.version else "-"
        out(f"{event.t:7.1f}  {version:>7}  {_shown(event.value):>9}  {event.name}")


VERDICT_COLOURS = {"promote": "tab:green", "rollback": "tab:red", "advance": "tab:blue"}


def _plot(state: LoopState, path: Path, estimator: _Estimator | None = None) -> None:
    """The live metric in 5 s buckets with every event as a labelled vertical line, and for
    a classifier the accuracy its calibrated confidence estimates without labels; the
    detectors' alarms in purple; below, each canary check's gain and interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    served, quality = state.served, state.quality
    if not served:
        return
    end = served[-1].t
    times, values = [], []
    for start in np.arange(0, end, 5.0):
        value = quality.of([s for s in served if start <= s.t < start + 5])
        if value is not None:
            times.append(start + 2.5)
            values.append(value)
    metric = quality.metric
    checks = [r for r in state.canary if "difference" in r and "ci_low" in r and "ci_high" in r]
    if checks:
        fig, (ax, evidence) = plt.subplots(
            2, 1, figsize=(12, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
        )
        _plot_canary(evidence, checks)
    else:
        fig, ax = plt.subplots(figsize=(12, 5))
    ax.plot(times, values, color="black", linewidth=1.2, label=f"live {metric} (5 s buckets)")
    if not quality.regression and estimator is not None:
        points = [
            (start + 5.0, estimator.of([s for s in served if start <= s.t < start + 10]))
            for start in np.arange(0, end, 5.0)
        ]
        shown = [(t, v) for t, v in points if v is not None]
        if shown:
            ax.plot(
                *zip(*shown, strict=True),
                color="tab:blue",
                linestyle="--",
                linewidth=1.0,
                label="estimated accuracy, no labels (10 s windows)",
            )
    notable = (
        "drift injected",
        "serves as @champion",
        "training run requested",
        "rolled back",
        "error-stream alarm",
        "shift injected",
    )
    for event in state.events:
        if any(word in event.name for word in notable):
            colour = "tab:purple" if event.name.startswith("error-stream") else "tab:red"
            ax.axvline(event.t, color=colour, alpha=0.4, linestyle="--")
            # x in data, y in axes units: the labels sit at the bottom on either scale.
            ax.text(
                event.t,
                0.02,
                event.name[:40],
                rotation=90,
                fontsize=7,
                va="bottom",
                transform=ax.get_xaxis_transform(),
            )
    if quality.regression:
        ax.set_ylim(0, max(values) * 1.05)
    else:
        ax.set_ylim(0, 1.02)
    (evidence if checks else ax).set_xlabel("seconds since traffic started")
    ax.set_ylabel(metric)
    ax.set_title(f"driftloop demo: live {metric} and what the loop did")
    ax.legend(loc="upper right" if quality.regression else "lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_canary(ax: Any, checks: list[dict[str, Any]]) -> None:
    """Each canary check: the challenger's gain and its interval, coloured by verdict
    (grey: wait); the interval shrinks as evidence accumulates until it clears a side."""
    for record in checks:
        low, high = record["ci_low"], record["ci_high"]
        colour = VERDICT_COLOURS.get(record["verdict"], "tab:gray")
        ax.errorbar(
            record["t"],
            record["difference"],
            yerr=[[record["difference"] - low], [high - record["difference"]]],
            fmt="o",
            markersize=3,
            color=colour,
            capsize=2,
        )
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_ylabel("canary gain")
    ax.set_title(
        "canary checks: challenger's gain, interval (green promote, red rollback)", fontsize=8
    )
