"""Canary analysis: is the challenger worse than the champion on live outcomes?

Outcomes are per-request scores (1 = correct, 0 = wrong, or any bounded quality score).
Welch's t-test does not assume equal variances, which matters when one arm has a few
hundred requests and the other thousands.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats

Verdict = Literal["advance", "rollback", "wait"]


@dataclass(frozen=True)
class CanaryPolicy:
    steps: tuple[float, ...] = (0.05, 0.25, 0.5, 1.0)
    min_samples: int = 100
    max_samples: int = 5_000
    margin: float = 0.02
    confidence: float = 0.95
    max_error_rate: float = 0.05
    max_p99_ms: float = 250.0


@dataclass(frozen=True)
class CanaryDecision:
    verdict: Verdict
    reason: str
    challenger_n: int
    champion_n: int
    challenger_mean: float | None = None
    champion_mean: float | None = None
    difference: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    effect_size: float | None = None


def welch(
    challenger: np.ndarray, champion: np.ndarray, confidence: float
) -> tuple[float, float, float, float]:
    """Difference of means, its Welch confidence interval, and the two-sided p-value."""
    m1, m2 = challenger.mean(), champion.mean()
    v1, v2 = challenger.var(ddof=1) / len(challenger), champion.var(ddof=1) / len(champion)
    difference = float(m1 - m2)
    se = float(np.sqrt(v1 + v2))
    if se == 0:  # identical constant outcomes: no uncertainty left
        return difference, difference, difference, 1.0 if difference == 0 else 0.0
    df = (v1 + v2) ** 2 / (v1**2 / (len(challenger) - 1) + v2**2 / (len(champion) - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * se
    p_value = float(stats.ttest_ind(challenger, champion, equal_var=False).pvalue)
    return difference, difference - half, difference + half, p_value


def analyse(
    challenger: np.ndarray,
    champion: np.ndarray,
    policy: CanaryPolicy,
    challenger_error_rate: float = 0.0,
    challenger_p99_ms: float = 0.0,
) -> CanaryDecision:
    """Advance when not worse by more than the margin; roll back when significantly worse,
    when a guard trips, or when the evidence stays inconclusive past `max_samples`."""
    n1, n2 = len(challenger), len(champion)
    if challenger_error_rate > policy.max_error_rate:
        return CanaryDecision(
            "rollback",
            f"error rate {challenger_error_rate:.1%} over the guard {policy.max_error_rate:.1%}",
            n1,
            n2,
        )
    if challenger_p99_ms > policy.max_p99_ms:
        return CanaryDecision(
            "rollback",
            f"p99 latency {challenger_p99_ms:.0f} ms over the guard {policy.max_p99_ms:.0f} ms",
            n1,
            n2,
        )
    if min(n1, n2) < policy.min_samples:
        return CanaryDecision(
            "wait",
            f"{n1} challenger and {n2} champion outcomes; need {policy.min_samples} each",
            n1,
            n2,
        )
    difference, low, high, p_value = welch(challenger, champion, policy.confidence)
    pooled_sd = float(np.sqrt((challenger.var(ddof=1) + champion.var(ddof=1)) / 2))
    numbers = {
        "challenger_mean": float(challenger.mean()),
        "champion_mean": float(champion.mean()),
        "difference": difference,
        "ci_low": low,
        "ci_high": high,
        "p_value": p_value,
        "effect_size": difference / pooled_sd if pooled_sd > 0 else 0.0,
    }
    interval = f"difference {difference:+.4f}, {policy.confidence:.0%} CI [{low:+.4f}, {high:+.4f}]"
    if high < 0:
        return CanaryDecision("rollback", f"significantly worse: {interval}", n1, n2, **numbers)
    if low > -policy.margin:
        return CanaryDecision(
            "advance", f"not worse by more than {policy.margin}: {interval}", n1, n2, **numbers
        )
    if min(n1, n2) >= policy.max_samples:
        return CanaryDecision(
            "rollback",
            f"inconclusive after {policy.max_samples} samples: {interval}",
            n1,
            n2,
            **numbers,
        )
    return CanaryDecision("wait", f"inconclusive so far: {interval}", n1, n2, **numbers)


def next_weight(current: float, steps: tuple[float, ...]) -> float:
    """The next traffic step above `current` (1.0 means: promote)."""
    return next((step for step in steps if step > current + 1e-9), 1.0)
