"""Demo data: river's Agrawal loan-approval stream, with covariate shift and concept drift.

This is the only module that knows the data is Agrawal; everything downstream sees files
with a target column. Covariate shift is done by rejection sampling (rows with high
salary and age are kept more often), which changes P(x) but leaves P(y | x) untouched;
concept drift switches the classification function, which changes P(y | x).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import pandas as pd
from river.datasets import synth

from driftloop.storage import Folder

DEFAULT_FUNCTION = 4
DEFAULT_DRIFT_FUNCTION = 1
DEFAULT_PERTURBATION = 0.1


@dataclass(frozen=True)
class DriftPlan:
    """Where the stream changes, counted in emitted rows from the start of the stream."""

    covariate_shift_at: int | None = None
    concept_drift_at: int | None = None
    drift_function: int = DEFAULT_DRIFT_FUNCTION


class LoanStream:
    """An endless labelled stream; `position` is the number of rows emitted so far."""

    def __init__(
        self,
        seed: int = 7,
        function: int = DEFAULT_FUNCTION,
        perturbation: float = DEFAULT_PERTURBATION,
        plan: DriftPlan = DriftPlan(),
    ) -> None:
        self.plan = plan
        self.position = 0
        self._before = iter(synth.Agrawal(function, seed=seed, perturbation=perturbation))
        self._after = iter(
            synth.Agrawal(plan.drift_function, seed=seed + 1, perturbation=perturbation)
        )
        self._rng = random.Random(seed)

    def __iter__(self) -> Iterator[tuple[dict[str, float], int]]:
        return self

    def __next__(self) -> tuple[dict[str, float], int]:
        drifted = _reached(self.plan.concept_drift_at, self.position)
        source = self._after if drifted else self._before
        shifted = _reached(self.plan.covariate_shift_at, self.position)
        while True:
            x, y = next(source)
            if not shifted or self._rng.random() < _keep_probability(x):
                self.position += 1
                return x, int(y)

    def take_frame(self, rows: int, target: str) -> pd.DataFrame:
        records = [{**x, target: y} for x, y in (next(self) for _ in range(rows))]
        return pd.DataFrame.from_records(records)


def _reached(at: int | None, position: int) -> bool:
    return at is not None and position >= at


def _keep_probability(x: dict[str, float]) -> float:
    """Favour older, richer applicants: a smooth, strong shift of two feature marginals."""
    salary = 1 / (1 + math.exp(-(x["salary"] - 90_000) / 12_000))
    age = 1 / (1 + math.exp(-(x["age"] - 55) / 6))
    return max(0.02, salary * age)


def write_batches(
    stream: LoanStream,
    rows: int,
    batch_rows: int,
    landing: Folder,
    target: str,
    fmt: Literal["csv", "parquet"] = "parquet",
) -> list[str]:
    """Write `rows` rows as files of at most `batch_rows`; names sort in landing order."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    written = []
    for index, start in enumerate(range(0, rows, batch_rows)):
        frame = stream.take_frame(min(batch_rows, rows - start), target)
        name = f"loans-{stamp}-{index:04d}.{fmt}"
        landing.write_frame(name, frame)  # published whole: a sensor never sees half a file
        written.append(name)
    return written
