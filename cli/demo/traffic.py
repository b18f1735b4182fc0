"""The demo's load: simulated rows sent to serving, their labels fed back after a delay
and landed as files, so the retrains see what the world has become."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import httpx
import pandas as pd

from cli.demo.plan import DemoPlan
from cli.demo.state import LoopState, Served
from driftloop.settings import Settings
from driftloop.simulate import DriftPlan, stream_for

LAND_MIN_ROWS = 60  # above the children's DRIFTLOOP_MIN_ROWS (50)
IN_FLIGHT = 16  # concurrent demo requests at most
FEEDBACK_EVERY_S = 0.5
NEVER = 10**12  # a stream position the traffic never reaches: no drift planned yet


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
