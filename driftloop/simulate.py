"""Demo data: drifting streams for the two kinds of task the loop serves.

`LoanStream` is river's Agrawal loan-approval stream (classification); `FriedmanStream` is
river's Friedman regression stream. This is the only module that knows what the data is;
everything downstream sees files with a target column. Covariate shift is done by
rejection sampling (some feature values are kept more often), which changes P(x) but
leaves P(y | x) untouched; concept drift switches the generating function, which changes
P(y | x).
"""

from __future__ import annotations

import math
import random
import sys
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Generic, Literal, TypeVar

import pandas as pd
from river.datasets import synth

from driftloop.storage import Folder

DEFAULT_FUNCTION = 4
DEFAULT_DRIFT_FUNCTION = 1
DEFAULT_PERTURBATION = 0.1
FRIEDMAN_FEATURES = 10
FRIEDMAN_SHIFTED = ("x0", "x1", "x2", "x3")  # 4 of 10: above the drift monitor's 30 % share

DemoTask = Literal["classification", "regression"]
Y = TypeVar("Y", int, float)


@dataclass(frozen=True)
class DriftPlan:
    """Where the stream changes, counted in emitted rows from the start of the stream;
    `drift_function` is the Agrawal function the loan stream switches to. With
    `concept_region` (feature, low, high) the concept changes only for rows whose feature
    lies in [low, high): a local change that costs a few points of accuracy, not dozens,
    yet stays learnable, the subtle episode a fixed threshold misses."""

    covariate_shift_at: int | None = None
    concept_drift_at: int | None = None
    drift_function: int = DEFAULT_DRIFT_FUNCTION
    concept_region: tuple[str, float, float] | None = None


class _DriftingStream(ABC, Generic[Y]):
    """An endless labelled stream; `position` is the number of rows emitted so far. The
    concept source switches at `plan.concept_drift_at`, the shift starts at
    `plan.covariate_shift_at`; `plan` may be replaced while the stream runs."""

    file_prefix: ClassVar[str]
    rows_are: ClassVar[str]  # what one row is, for the demo's messages

    def __init__(
        self,
        before: Iterator[tuple[dict[Any, Any], Any]],
        after: Iterator[tuple[dict[Any, Any], Any]],
        seed: int,
        plan: DriftPlan,
    ) -> None:
        self.plan = plan
        self.position = 0
        self._before, self._after = before, after
        self._rng = random.Random(seed)

    @property
    @abstractmethod
    def concept_change(self) -> str:
        """What concept drift does to this stream, for the demo's timeline."""

    def __iter__(self) -> Iterator[tuple[dict[str, float], Y]]:
        return self

    def __next__(self) -> tuple[dict[str, float], Y]:
        drifted = _reached(self.plan.concept_drift_at, self.position)
        region = self.plan.concept_region
        source = self._after if drifted and region is None else self._before
        shifted = _reached(self.plan.covariate_shift_at, self.position)
        while True:
            x, y = self._row(*next(source))
            if drifted and region is not None and _inside(x, region):
                # The same share of rows falls in the region; theirs follow the new concept.
                x, y = self._row(*next(self._after))
                while not _inside(x, region):
                    x, y = self._row(*next(self._after))
            if not shifted or self._rng.random() < self._keep_probability(x):
                self.position += 1
                return x, y

    def take_frame(self, rows: int, target: str) -> pd.DataFrame:
        records = [{**x, target: y} for x, y in (next(self) for _ in range(rows))]
        return pd.DataFrame.from_records(records)

    @abstractmethod
    def _row(self, x: dict[Any, Any], y: Any) -> tuple[dict[str, float], Y]:
        """A generator's row as the files and requests carry it."""

    @abstractmethod
    def _keep_probability(self, x: dict[str, float]) -> float:
        """The chance a row survives covariate shift's rejection sampling."""


class LoanStream(_DriftingStream[int]):
    """Loan applications, approved (1) or not (0): Agrawal's function `function` before
    concept drift and `plan.drift_function` after it, with label noise `perturbation`."""

    file_prefix = "loans"
    rows_are = "loan applications"

    def __init__(
        self,
        seed: int = 7,
        function: int = DEFAULT_FUNCTION,
        perturbation: float = DEFAULT_PERTURBATION,
        plan: DriftPlan = DriftPlan(),
    ) -> None:
        super().__init__(
            iter(synth.Agrawal(function, seed=seed, perturbation=perturbation)),
            iter(synth.Agrawal(plan.drift_function, seed=seed + 1, perturbation=perturbation)),
            seed,
            plan,
        )

    @property
    def concept_change(self) -> str:
        return f"Agrawal function -> {self.plan.drift_function}"

    def _row(self, x: dict[Any, Any], y: Any) -> tuple[dict[str, float], int]:
        return x, int(y)

    def _keep_probability(self, x: dict[str, float]) -> float:
        """Favour older, richer applicants: a smooth, strong shift of two feature marginals."""
        salary = 1 / (1 + math.exp(-(x["salary"] - 90_000) / 12_000))
        age = 1 / (1 + math.exp(-(x["age"] - 55) / 6))
        return max(0.02, salary * age)


class FriedmanStream(_DriftingStream[float]):
    """Ten uniform features `x0`..`x9` and a float target with unit Gaussian noise:
    Friedman's function of x0..x4 before concept drift; after it, river's global drift
    (`FriedmanDrift`, 'gra'), the same terms on other features, over the whole space."""

    file_prefix = "friedman"
    rows_are = "Friedman regression rows"

    def __init__(self, seed: int = 7, plan: DriftPlan = DriftPlan()) -> None:
        # `position=(0, maxsize)`: the drifted concept from the generator's first row on.
        drifted = synth.FriedmanDrift(drift_type="gra", position=(0, sys.maxsize), seed=seed + 1)
        super().__init__(iter(synth.Friedman(seed=seed)), iter(drifted), seed, plan)

    @property
    def concept_change(self) -> str:
        return "Friedman function -> its 'gra' drift"

    def _row(self, x: dict[Any, Any], y: Any) -> tuple[dict[str, float], float]:
        return {f"x{i}": float(x[i]) for i in range(FRIEDMAN_FEATURES)}, float(y)

    def _keep_probability(self, x: dict[str, float]) -> float:
        """Favour high values of four features: their marginals move from uniform towards 1."""
        keep = math.prod(1 / (1 + math.exp(-(x[name] - 0.5) / 0.1)) for name in FRIEDMAN_SHIFTED)
        return max(0.02, keep)


Stream = LoanStream | FriedmanStream


def stream_for(task: DemoTask, seed: int, plan: DriftPlan = DriftPlan()) -> Stream:
    """The demo's stream for a task: loans to classify or Friedman rows to regress."""
    if task == "regression":
        return FriedmanStream(seed=seed, plan=plan)
    return LoanStream(seed=seed, plan=plan)


def _reached(at: int | None, position: int) -> bool:
    return at is not None and position >= at


def _inside(x: dict[str, float], region: tuple[str, float, float]) -> bool:
    feature, low, high = region
    return low <= x[feature] < high


def write_batches(
    stream: Stream,
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
        name = f"{stream.file_prefix}-{stamp}-{index:04d}.{fmt}"
        landing.write_frame(name, frame)  # published whole: a sensor never sees half a file
        written.append(name)
    return written
