"""What the demo's threads share: the answered requests, the events and the live metric.

The traffic thread appends what serving answered, the watcher what the loop did; the
report reads both once they have stopped.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from driftloop.simulate import DemoTask


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
            f"live_{self.metric}": rounded(self.value),
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
        live = f"live {self.quality.metric} {shown_value(value)}"
        print(f"[{event.t:6.1f}s] {name}  (champion v{self.champion}, {live})")
        return event


def shown_value(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
