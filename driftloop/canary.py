"""Canary analysis: is the challenger worse than the champion on live outcomes, in the
primary metric?

Each arm is its labelled live predictions (true labels, served probabilities; for
regression true and served values). A metric that is a mean over requests (accuracy: right
or wrong; log loss: each request's loss; RMSE: each request's squared error, MAE: its
absolute error) compares the arms request by request with Welch's t-test, which does not
assume equal variances (one arm may have a few hundred requests and the other thousands).
A metric of the whole sample (ROC AUC, PR AUC, F1, balanced accuracy, R²) compares them by
a seeded bootstrap of the metric's difference. Either way `difference` is the challenger's
gain in the metric's units (for RMSE the squared error's), > 0 better whatever the
metric's direction, and the verdict rules are the same. For RMSE and MAE the margin is a
fraction of the champion's mean loss, since their units are the target's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats

from driftloop.metrics import Metric, encode, label_codes

Verdict = Literal["advance", "promote", "rollback", "wait"]
Mode = Literal["sequential", "welch", "bandit"]


@dataclass(frozen=True)
class CanaryPolicy:
    steps: tuple[float, ...] = (0.05, 0.25, 0.5, 1.0)
    min_samples: int = 100
    max_samples: int = 10_000
    # In the metric's units (a fraction of the champion's for RMSE, MAE); None: the metric's
    # default_canary_margin.
    margin: float | None = None
    confidence: float = 0.95
    # 2 metric calls per resample; scikit-learn's ROC AUC took 1.5-5 ms per call here (idle to
    # busy), so a decision costs 1.5-5 s, well inside the canary sensor's 15 s interval.
    bootstrap_resamples: int = 500
    seed: int = 0
    max_error_rate: float = 0.05
    max_p99_ms: float = 250.0
    # `sequential`: a confidence sequence, valid however often it is looked at, with early
    # promotion of a clear winner; `welch`: the classic fixed-horizon test, read at every
    # check (its real error rates are above the nominal level; see docs/benchmarks.md);
    # `bandit`: the same interval (a whole-sample metric's bootstrap) decides when to stop,
    # and between checks the challenger gets the share Thompson sampling gives it (the
    # chance it is the better arm), at least the first step's and at most 1 -
    # `champion_floor`.
    mode: Mode = "sequential"
    champion_floor: float = 0.25


@dataclass(frozen=True)
class CanaryDecision:
    verdict: Verdict
    reason: str
    metric: str
    challenger_n: int
    champion_n: int
    challenger_score: float | None = None
    champion_score: float | None = None
    difference: float | None = None  # the challenger's gain: > 0 better
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    effect_size: float | None = None
    probability_better: float | None = None  # the challenger's, under a normal posterior
    weight: float | None = None  # bandit: the challenger's next share of traffic


@dataclass(frozen=True)
class Arm:
    """One arm's labelled live predictions: the true labels (matched to the classes as
    strings) and the probabilities it served, one column per class in class order; for
    regression (no classes) the true values and the served predictions."""

    labels: Sequence
    outputs: np.ndarray
    keys: int = 0  # distinct sticky routing keys among the outcomes
    capped: int = 0  # outcomes left out: their key had supplied its share already

    def __len__(self) -> int:
        return len(self.labels)


def one_hot(predictions: Sequence, classes: Sequence) -> np.ndarray:
    """Served decisions as probabilities of 1 for the predicted class: what a log without
    probabilities still tells, enough for accuracy (argmax is the decision)."""
    return np.eye(len(classes))[label_codes(predictions, classes)]


def welch(
    challenger: np.ndarray, champion: np.ndarray, confidence: float
) -> tuple[float, float, float, float]:
    """Difference of means, its Welch confidence interval, and the two-sided p-value."""
    difference = float(challenger.mean() - champion.mean())
    if challenger.var() == 0 and champion.var() == 0:
        # Constant outcomes on both arms: no uncertainty left, where scipy answers NaN.
        return difference, difference, difference, 1.0 if difference == 0 else 0.0
    test = stats.ttest_ind(challenger, champion, equal_var=False)
    low, high = test.confidence_interval(confidence)
    return difference, float(low), float(high), float(test.pvalue)


def sequential(
    challenger: np.ndarray, champion: np.ndarray, confidence: float, horizon: int
) -> tuple[float, float, float]:
    """The difference of the arms' means and an interval for it that holds at every sample
    size at once, however often it is read: a normal-mixture confidence sequence in
    information time (Robbins; asymptotically valid by the time-uniform CLT of
    Waudby-Smith, Arnold, Wu and Ramdas, 2021), tightest near `horizon` outcomes per arm.

    Reading a fixed-horizon interval (Welch) at every sensor tick instead crosses the true
    difference far more often than 1 - confidence; this one pays for that with a wider
    interval (about 1.5 times Welch's at its horizon).
    """
    alpha = 1 - confidence
    v1, v2 = challenger.var(ddof=1), champion.var(ddof=1)
    difference = float(challenger.mean() - champion.mean())
    variance = v1 / len(challenger) + v2 / len(champion)
    if variance == 0:  # identical constant outcomes: no uncertainty left
        return difference, difference, difference
    information = 1 / variance
    # the mixture's scale, chosen so the boundary is tightest at the horizon's information
    planned = horizon / max(v1 + v2, 1e-12)
    rho2 = (-2 * np.log(alpha) + np.log(-2 * np.log(alpha) + 1)) / planned
    bound = np.sqrt(
        (information + 1 / rho2) * (2 * np.log(1 / alpha) + np.log1p(information * rho2))
    )
    half = float(bound / information)
    return difference, difference - half, difference + half


def bootstrap(
    challenger: Arm,
    champion: Arm,
    metric: Metric,
    classes: Sequence,
    confidence: float,
    resamples: int,
    seed: int,
) -> tuple[float, float, float, float] | None:
    """The challenger's gain in `metric`, its percentile bootstrap interval, and the share
    of resamples in which the challenger is better (its chance of being the better arm);
    None when the metric is not defined on an arm (ROC AUC of labels of one class).

    Each arm is resampled on its own and within each true class (the class counts stay as
    observed), so every resample defines a ranking metric such as ROC AUC even when the
    positive class is rare; regression rows are one stratum. Written with numpy:
    scipy.stats.bootstrap resamples without strata and would draw positive-free samples.
    Seeded, so one decision repeats exactly.
    """
    k = len(classes)
    ours, theirs = (encode(arm.labels, arm.outputs, classes) for arm in (challenger, champion))
    if not (metric.defined_on(ours[0], k) and metric.defined_on(theirs[0], k)):
        return None
    rng = np.random.default_rng(seed)
    strata = [
        [np.flatnonzero(codes == c) for c in np.unique(codes)] if k else [np.arange(len(codes))]
        for codes, _ in (ours, theirs)
    ]

    def draw(arm: int) -> np.ndarray:
        return np.concatenate([rng.choice(rows, size=len(rows)) for rows in strata[arm]])

    def gain(a: np.ndarray, b: np.ndarray) -> float:
        return metric.gain(
            metric.scorer(ours[0][a], ours[1][a], k), metric.scorer(theirs[0][b], theirs[1][b], k)
        )

    observed = gain(np.arange(len(ours[0])), np.arange(len(theirs[0])))
    gains = np.array([gain(draw(0), draw(1)) for _ in range(resamples)])
    low, high = np.quantile(gains, [(1 - confidence) / 2, (1 + confidence) / 2])
    return observed, float(low), float(high), float((gains > 0).mean())


def analyse(
    challenger: Arm,
    champion: Arm,
    policy: CanaryPolicy,
    metric: Metric,
    classes: Sequence,
    challenger_error_rate: float = 0.0,
    challenger_p99_ms: float = 0.0,
) -> CanaryDecision:
    """Advance when not worse by more than the margin (in `metric`'s units); roll back when
    significantly worse, when a guard trips, or when the evidence stays inconclusive past
    `max_samples`."""
    n1, n2 = len(challenger), len(champion)
    counts = {"metric": metric.name, "challenger_n": n1, "champion_n": n2}
    if challenger_error_rate > policy.max_error_rate:
        return CanaryDecision(
            "rollback",
            f"error rate {challenger_error_rate:.1%} over the guard {policy.max_error_rate:.1%}",
            **counts,
        )
    if challenger_p99_ms > policy.max_p99_ms:
        return CanaryDecision(
            "rollback",
            f"p99 latency {challenger_p99_ms:.0f} ms over the guard {policy.max_p99_ms:.0f} ms",
            **counts,
        )
    if min(n1, n2) < policy.min_samples:
        return CanaryDecision(
            "wait",
            f"{n1} challenger and {n2} champion outcomes; need {policy.min_samples} each",
            **counts,
        )
    at_cap = min(n1, n2) >= policy.max_samples
    numbers = _evidence(challenger, champion, policy, metric, classes)
    if numbers is None:
        reason = f"{metric.name} needs every class among each arm's labels"
        if at_cap:
            return CanaryDecision(
                "rollback", f"inconclusive after {policy.max_samples} samples: {reason}", **counts
            )
        return CanaryDecision("wait", reason, **counts)
    difference, low, high = numbers["difference"], numbers["ci_low"], numbers["ci_high"]
    configured = metric.default_canary_margin if policy.margin is None else policy.margin
    margin = metric.margin_at(configured, numbers["champion_score"])
    ci = f"{policy.confidence:.0%} CI [{low:+.4f}, {high:+.4f}]"
    loss = " (squared error)" if metric.name == "rmse" else ""
    interval = f"{metric.name} gain{loss} {difference:+.4f}, {ci}"
    if policy.mode == "bandit":
        return _bandit(policy, numbers, margin, at_cap, interval, counts)
    if high < 0:
        verdict, reason = "rollback", f"significantly worse: {interval}"
    elif low > 0 and policy.mode == "sequential" and metric.per_row is not None:
        # the interval is always valid, so a clear winner need not wait for every step
        verdict, reason = "promote", f"better at any sample size: {interval}"
    elif low > -margin:
        verdict, reason = "advance", f"not worse by more than {margin:.4g}: {interval}"
    elif at_cap:
        verdict, reason = "rollback", f"inconclusive after {policy.max_samples} samples: {interval}"
    else:
        verdict, reason = "wait", f"inconclusive so far: {interval}"
    return CanaryDecision(verdict, reason, **counts, **numbers)


def _bandit(
    policy: CanaryPolicy,
    numbers: dict[str, float],
    margin: float,
    at_cap: bool,
    interval: str,
    counts: dict[str, object],
) -> CanaryDecision:
    """Stop when the always-valid interval decides (worse: roll back; not worse by more than
    the margin: promote, since the allocation already limited the exposure); else keep
    going at the challenger's Thompson share. Thompson sampling sends each request to an
    arm with the probability that the arm is the better one; with many requests per
    check that is the share itself."""
    low, high = numbers["ci_low"], numbers["ci_high"]
    if high < 0:
        return CanaryDecision("rollback", f"significantly worse: {interval}", **counts, **numbers)
    if low > -margin:
        reason = f"not worse by more than {margin:.4g} at any sample size: {interval}"
        return CanaryDecision("promote", reason, **counts, **numbers)
    if at_cap:
        reason = f"inconclusive after {policy.max_samples} samples: {interval}"
        return CanaryDecision("rollback", reason, **counts, **numbers)
    share = thompson_share(numbers["probability_better"], policy)
    reason = (
        f"P(challenger better) {numbers['probability_better']:.2f}: {share:.0%} of traffic; "
        f"{interval}"
    )
    return CanaryDecision("advance", reason, **counts, **numbers, weight=share)


def thompson_share(probability_better: float, policy: CanaryPolicy) -> float:
    """The challenger's traffic share: its chance of being the better arm, bounded below by
    the first step (enough evidence keeps arriving) and above by the champion's floor."""
    return float(np.clip(probability_better, policy.steps[0], 1 - policy.champion_floor))


def _evidence(
    challenger: Arm, champion: Arm, policy: CanaryPolicy, metric: Metric, classes: Sequence
) -> dict[str, float] | None:
    """Both arms' scores and the challenger's gain with its interval (and, for a per-request
    metric, the p-value and effect size); None when the metric is undefined on an arm."""
    if metric.per_row is not None:
        rows = [
            metric.per_row(*encode(a.labels, a.outputs, classes)) for a in (challenger, champion)
        ]
        # Outcomes signed so that higher is better: the difference is the gain.
        sign = 1.0 if metric.greater_is_better else -1.0
        ours, theirs = sign * rows[0], sign * rows[1]
        pooled_sd = float(np.sqrt((rows[0].var(ddof=1) + rows[1].var(ddof=1)) / 2))
        numbers = {
            "challenger_score": float(rows[0].mean()),
            "champion_score": float(rows[1].mean()),
        }
        if policy.mode == "welch":
            difference, low, high, numbers["p_value"] = welch(ours, theirs, policy.confidence)
        else:
            difference, low, high = sequential(ours, theirs, policy.confidence, horizon(policy))
        se = float(np.sqrt(ours.var(ddof=1) / len(ours) + theirs.var(ddof=1) / len(theirs)))
        numbers["probability_better"] = (
            float(stats.norm.cdf(difference / se)) if se > 0 else float(difference > 0)
        )
        return {
            **numbers,
            "difference": difference,
            "ci_low": low,
            "ci_high": high,
            "effect_size": difference / pooled_sd if pooled_sd > 0 else 0.0,
        }
    interval = bootstrap(
        challenger,
        champion,
        metric,
        classes,
        policy.confidence,
        policy.bootstrap_resamples,
        policy.seed,
    )
    if interval is None:
        return None
    difference, low, high, better = interval
    return {
        "probability_better": better,
        "challenger_score": metric.score(challenger.labels, challenger.outputs, classes),
        "champion_score": metric.score(champion.labels, champion.outputs, classes),
        "difference": difference,
        "ci_low": low,
        "ci_high": high,
    }


def capped_per_key(keys: Sequence[str | None], share: float) -> np.ndarray:
    """Which outcomes (in time order) count: each sticky routing key supplies at most
    `share` of the arm's outcomes (counted before the cap, at least one), its earliest.

    A sticky key chooses its arm, so without a cap one client could decide a canary with
    its own outcomes (forged or not). Outcomes without a key were routed at random and
    count each on its own.
    """
    limit = max(1, int(share * len(keys)))
    seen: dict[str, int] = {}
    keep = np.ones(len(keys), dtype=bool)
    for i, key in enumerate(keys):
        if key is None or (isinstance(key, float) and np.isnan(key)):
            continue
        seen[key] = seen.get(key, 0) + 1
        keep[i] = seen[key] <= limit
    return keep


def horizon(policy: CanaryPolicy) -> int:
    """Where the confidence sequence is tightest: ten times the minimum sample, within the
    cap (1,000 outcomes per arm by default), where most canary decisions fall."""
    return min(policy.max_samples, 10 * policy.min_samples)


def next_weight(current: float, steps: tuple[float, ...]) -> float:
    """The next traffic step above `current` (1.0 means: promote)."""
    return next((step for step in steps if step > current + 1e-9), 1.0)
