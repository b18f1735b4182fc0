"""Is a feature's shift bigger than the reference's own window-to-window variation?

Evidently's per-feature tests answer "is there any difference": a p-value on small samples,
a distance against a fixed threshold (0.1) on large ones. Neither knows how much two windows
of *unchanged* traffic differ at the window's size: on a few hundred rows two calm windows
are often 0.1 apart (measured: `scripts/bench_false_alarms.py`), and on 100k rows a
harmless shift is significant. So a feature counts as drifted only when Evidently flags it
*and* its effect size is beyond what the reference shows between its own random windows of
the same size.

Effect sizes: for a numeric feature the Wasserstein distance in units of the reference's
standard deviation (Evidently's "normed Wasserstein"); for a categorical one the
Jensen-Shannon distance of the level frequencies. The bound per feature is the largest
effect among `NULL_DRAWS` pairs of disjoint reference windows of the current window's size
(at most half the reference; beyond that the bound is scaled by sqrt(m / n), the rate at
which both distances shrink with sample size under no change), times `MARGIN`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from scipy.spatial.distance import jensenshannon
from scipy.stats import wasserstein_distance

from driftloop.monitoring import DriftResult

NULL_DRAWS = 20
# The largest of 20 calm pairs is about their 95th percentile; 1.25x leaves room for the
# sampling error of that maximum itself.
MARGIN = 1.25


@dataclass(frozen=True)
class EffectSizes:
    """Per feature: the current window's effect against the reference, and the bound."""

    effect: dict[str, float]
    bound: dict[str, float]

    def beyond(self, column: str) -> bool:
        return self.effect.get(column, math.inf) > self.bound.get(column, 0.0)


def effect(reference: pd.Series, current: pd.Series, numeric: bool) -> float:
    """Normed Wasserstein (numeric) or Jensen-Shannon distance (categorical); NaN when a side
    has no values."""
    ref, cur = reference.dropna(), current.dropna()
    if ref.empty or cur.empty:
        return math.nan
    if numeric:
        return _normed_wasserstein(ref.to_numpy(dtype=float), cur.to_numpy(dtype=float))
    codes, _ = pd.factorize(pd.concat([ref, cur], ignore_index=True).astype(str))
    return _jensen_shannon(codes[: len(ref)], codes[len(ref) :], int(codes.max()) + 1)


def _normed_wasserstein(reference: np.ndarray, current: np.ndarray) -> float:
    return float(wasserstein_distance(reference, current)) / (float(np.std(reference)) or 1.0)


def _jensen_shannon(reference: np.ndarray, current: np.ndarray, levels: int) -> float:
    shares = [np.bincount(side, minlength=levels) / len(side) for side in (reference, current)]
    return float(jensenshannon(*shares, base=2))


def effect_sizes(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    numerical: Sequence[str],
    categorical: Sequence[str],
    seed: int,
) -> EffectSizes:
    """Each feature's effect and its bound from the reference's own calm windows.

    The same numbers as `effect` on each pair of windows, from each column's values taken
    out of pandas once (numbers as floats, levels as codes in one table): 20 draws of 9
    features through pandas' `iloc` and `dropna` were ~0.4 s of a drift run (measured)."""
    rng = np.random.default_rng(seed)
    size = max(1, min(len(current), len(reference) // 2))
    scale = math.sqrt(size / len(current)) if len(current) else 1.0
    draws = [rng.permutation(len(reference))[: 2 * size] for _ in range(NULL_DRAWS)]
    effects, bounds = {}, {}
    for column, numeric in [*((c, True) for c in numerical), *((c, False) for c in categorical)]:
        effects[column] = effect(reference[column], current[column], numeric)
        values = _column_values(reference[column], numeric)
        calm = [_calm_effect(values, rows, size, numeric) for rows in draws]
        finite = [value for value in calm if math.isfinite(value)]
        bounds[column] = MARGIN * scale * max(finite) if finite else math.inf
    return EffectSizes(effects, bounds)


def _column_values(column: pd.Series, numeric: bool) -> np.ndarray:
    """A reference column as `effect` reads it: floats (NaN missing), or each level's code
    (-1 missing) by its text, the `str` that `effect` compares levels by."""
    if numeric:
        return column.to_numpy(dtype=float)
    present = column.notna().to_numpy()
    codes = np.full(len(column), -1)
    codes[present] = pd.factorize(column[present].astype(str))[0]
    return codes


def _calm_effect(values: np.ndarray, rows: np.ndarray, size: int, numeric: bool) -> float:
    """`effect` between two disjoint random windows of the reference (`_column_values`)."""
    first, second = values[rows[:size]], values[rows[size:]]
    if numeric:
        first, second = first[~np.isnan(first)], second[~np.isnan(second)]
    else:
        first, second = first[first >= 0], second[second >= 0]
    if len(first) == 0 or len(second) == 0:
        return math.nan
    if numeric:
        return _normed_wasserstein(first, second)
    # numbered by first appearance in the pair, as `effect` numbers the levels it reads
    codes, levels = pd.factorize(np.concatenate([first, second]))
    return _jensen_shannon(codes[: len(first)], codes[len(first) :], len(levels))


def gated(result: DriftResult, sizes: EffectSizes) -> DriftResult:
    """`result` with a column drifted only if its effect is also beyond its bound."""
    columns = tuple(
        replace(c, drifted=c.drifted and sizes.beyond(c.column)) for c in result.columns
    )
    share = sum(c.drifted for c in columns) / len(columns) if columns else 0.0
    return replace(result, columns=columns, share_drifted=share)
