import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from assets.canary import arm_evidence, evidence_metric, evidence_numbers
from driftloop.canary import (
    Arm,
    CanaryPolicy,
    analyse,
    bootstrap,
    capped_per_key,
    next_weight,
    one_hot,
    sequential,
    welch,
)
from driftloop.metrics import metric_named
from driftloop.settings import Settings, load_settings

# The classic fixed-horizon test; the sequential one (the default) has tests of its own.
POLICY = CanaryPolicy(min_samples=100, max_samples=3000, margin=0.02, confidence=0.95, mode="welch")
SEQUENTIAL = CanaryPolicy(min_samples=100, max_samples=5000, margin=0.02)
# Fewer resamples than the default keep the unit tests quick; the verdicts below are far
# from the interval's edges.
BOOTSTRAP = CanaryPolicy(min_samples=100, max_samples=3000, margin=0.02, bootstrap_resamples=200)
CLASSES = (0, 1)
ACCURACY, ROC_AUC, LOG_LOSS = (metric_named(m) for m in ("accuracy", "roc_auc", "log_loss"))


def outcomes(accuracy: float, n: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random(n) < accuracy).astype(float)


def decisions(accuracy: float, n: int, seed: int) -> Arm:
    """An arm whose served decisions (no probabilities) are right `accuracy` of the time;
    labels as the log holds them, strings."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    predicted = np.where(outcomes(accuracy, n, seed + 100) == 1, labels, 1 - labels)
    return Arm([str(v) for v in labels], one_hot([str(v) for v in predicted], CLASSES))


def scored(separation: float, n: int, seed: int, positives: float = 0.08) -> Arm:
    """An imbalanced arm whose probability of class 1 separates the classes by `separation`
    (0: chance, ROC AUC 0.5; 3: ROC AUC about 0.98)."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < positives).astype(int)
    p = 1 / (1 + np.exp(-(rng.normal(size=n) - 2.5 + separation * labels)))
    return Arm([str(v) for v in labels], np.column_stack([1 - p, p]))


def test_equal_models_advance() -> None:
    decision = analyse(decisions(0.9, 2000, 1), decisions(0.9, 2000, 2), POLICY, ACCURACY, CLASSES)
    assert decision.verdict == "advance" and decision.metric == "accuracy"
    assert decision.ci_low > -0.02 and decision.ci_low < decision.difference < decision.ci_high


def test_clearly_worse_challenger_rolls_back() -> None:
    decision = analyse(decisions(0.6, 300, 1), decisions(0.9, 3000, 2), POLICY, ACCURACY, CLASSES)
    assert decision.verdict == "rollback" and decision.ci_high < 0
    assert decision.p_value < 0.001 and decision.effect_size < -0.5
    assert "significantly worse" in decision.reason


def test_too_few_samples_waits() -> None:
    decision = analyse(decisions(0.5, 40, 1), decisions(0.9, 2000, 2), POLICY, ACCURACY, CLASSES)
    assert decision.verdict == "wait" and "need 100 each" in decision.reason


def test_guards_roll_back_before_statistics() -> None:
    few = decisions(0.9, 10, 1), decisions(0.9, 10, 2)
    worse_latency = analyse(*few, POLICY, ACCURACY, CLASSES, 0.0, 900.0)
    errors = analyse(*few, POLICY, ACCURACY, CLASSES, 0.2, 0.0)
    assert worse_latency.verdict == errors.verdict == "rollback"
    assert "p99 latency" in worse_latency.reason and "error rate" in errors.reason


def test_inconclusive_at_the_sample_cap_rolls_back() -> None:
    slightly_worse = analyse(
        decisions(0.875, 3000, 1), decisions(0.9, 3000, 2), POLICY, ACCURACY, CLASSES
    )
    assert slightly_worse.verdict == "rollback"
    assert "inconclusive" in slightly_worse.reason or "significantly" in slightly_worse.reason


def test_welch_interval_is_the_textbook_one() -> None:
    """scipy's interval against Welch-Satterthwaite written out: t quantile times the
    standard error around the difference; constant arms have no width (scipy says NaN)."""
    a, b = outcomes(0.8, 500, 3), outcomes(0.85, 800, 4)
    diff, low, high, p = welch(a, b, 0.95)
    v1, v2 = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    df = (v1 + v2) ** 2 / (v1**2 / (len(a) - 1) + v2**2 / (len(b) - 1))
    half = stats.t.ppf(0.975, df) * np.sqrt(v1 + v2)
    assert np.isclose(diff, a.mean() - b.mean()) and 0 < p < 1
    assert np.allclose([low, high], [diff - half, diff + half], rtol=1e-12, atol=0)
    assert welch(np.ones(40), np.zeros(60), 0.95) == (1.0, 1.0, 1.0, 0.0)


def test_log_loss_is_compared_per_request_lower_being_better() -> None:
    confident, unsure = scored(3.0, 1500, 1, positives=0.5), scored(0.5, 1500, 2, positives=0.5)
    better = analyse(confident, unsure, POLICY, LOG_LOSS, CLASSES)
    worse = analyse(unsure, confident, POLICY, LOG_LOSS, CLASSES)
    assert better.challenger_score < better.champion_score  # lower loss ...
    assert better.difference > 0 and better.verdict == "advance"  # ... is a gain
    assert worse.difference < 0 and worse.verdict == "rollback" and worse.p_value < 0.001
    assert np.isclose(
        better.challenger_score, LOG_LOSS.score(confident.labels, confident.outputs, CLASSES)
    )


def test_roc_auc_by_bootstrap_better_advances_worse_rolls_back_equal_waits() -> None:
    strong, weak = scored(3.0, 1500, 1), scored(1.0, 1500, 2)
    better = analyse(strong, weak, BOOTSTRAP, ROC_AUC, CLASSES)
    worse = analyse(weak, strong, BOOTSTRAP, ROC_AUC, CLASSES)
    assert better.verdict == "advance" and better.metric == "roc_auc"
    assert better.ci_low > 0 and better.p_value is None and "roc_auc gain +" in better.reason
    assert worse.verdict == "rollback" and worse.ci_high < 0
    assert worse.challenger_score < worse.champion_score
    # Equal models on few positives: an interval wider than the margin both ways.
    equal = analyse(scored(2.0, 400, 3), scored(2.0, 400, 4), BOOTSTRAP, ROC_AUC, CLASSES)
    assert equal.verdict == "wait" and equal.ci_low < -0.02 < 0 < equal.ci_high


def test_bootstrap_is_seeded_and_keeps_rare_classes_in_every_resample() -> None:
    # 5 positives in 300: unstratified resamples would often hold none and have no ROC AUC.
    rare, other = scored(2.0, 300, 5, positives=0.02), scored(2.0, 300, 6, positives=0.02)
    first = bootstrap(rare, other, ROC_AUC, CLASSES, 0.95, 100, seed=1)
    assert first is not None and first == bootstrap(rare, other, ROC_AUC, CLASSES, 0.95, 100, 1)
    assert first[1] <= first[0] <= first[2]


def test_a_metric_undefined_on_an_arm_waits() -> None:
    negatives = Arm(["0"] * 200, np.tile([0.9, 0.1], (200, 1)))
    decision = analyse(negatives, scored(2.0, 200, 1), BOOTSTRAP, ROC_AUC, CLASSES)
    assert decision.verdict == "wait" and "needs every class" in decision.reason


def test_steps_walk_to_promotion() -> None:
    steps = (0.05, 0.25, 0.5, 1.0)
    assert [next_weight(w, steps) for w in (0.0, 0.05, 0.25, 0.5)] == [0.05, 0.25, 0.5, 1.0]


def _logs(settings: Settings, rows: list[tuple[str, str, list[float] | None]], name: str) -> None:
    """Challenger predictions of v2 (`request_id`, label fed back, probabilities or None for
    a file written before the log had them) and their feedback, as serving writes them."""
    at = pd.Timestamp.now(tz="UTC")
    classes = ["a", "b", "c"]
    predictions = pd.DataFrame(
        {
            "request_id": [r for r, _, _ in rows],
            "at": at,
            "model_version": "2",
            "route": "challenger",
            "prediction": [classes[int(np.argmax(p))] if p else "a" for _, _, p in rows],
            "probability": [max(p) if p else 1.0 for _, _, p in rows],
            "latency_ms": 5.0,
        }
    )
    if all(p is not None for _, _, p in rows):
        predictions["probabilities"] = [p for _, _, p in rows]
    settings.prediction_log.write_frame(f"{name}.parquet", predictions)
    feedback = pd.DataFrame({"request_id": [r for r, _, _ in rows], "at": at, "id": None})
    settings.feedback_log.write_frame(
        f"{name}.parquet", feedback.assign(label=[label for _, label, _ in rows])
    )


def test_live_evidence_uses_logged_probabilities_else_decisions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DRIFTLOOP_HOME", str(tmp_path))
    settings = load_settings()
    since, classes = time.time() - 60, ["a", "b", "c"]
    _logs(settings, [("r1", "b", [0.2, 0.7, 0.1]), ("r2", "c", [0.5, 0.1, 0.4])], "new")
    arm, logged, p99 = arm_evidence(settings, since, "challenger", "2", classes)
    assert logged and p99 == 5.0 and sorted(arm.labels) == ["b", "c"]
    assert sorted(map(tuple, arm.outputs.tolist())) == [(0.2, 0.7, 0.1), (0.5, 0.1, 0.4)]
    assert evidence_metric(ROC_AUC, logged) is ROC_AUC

    _logs(settings, [("r3", "a", None)], "old")  # three classes: one probability tells nothing
    arm, logged, _ = arm_evidence(settings, since, "challenger", "2", classes)
    assert not logged and len(arm) == 3
    assert evidence_metric(ROC_AUC, logged) is ACCURACY
    assert ACCURACY.score(arm.labels, arm.outputs, classes) == pytest.approx(2 / 3)
    waiting = analyse(arm, arm, POLICY, ROC_AUC, classes)
    numbers = evidence_numbers(waiting, arm, arm, classes)  # accuracy beside any metric
    assert numbers == {"challenger_accuracy": pytest.approx(2 / 3), "champion_accuracy": 2 / 3}


def test_one_sticky_key_cannot_supply_more_than_its_share_of_an_arm() -> None:
    """200 outcomes from one client's key beside 100 from 100 others and 20 unkeyed: at a
    10 % share the flooding key counts 32 (10 % of 320, its earliest), everyone else in
    full."""
    keys = ["attacker"] * 200 + [f"user-{i}" for i in range(100)] + [None] * 20
    kept = capped_per_key(keys, share=0.1)
    assert kept[:32].tolist() == [True] * 32 and not kept[32:200].any()
    assert kept[200:].all()  # each other key once, and unkeyed outcomes count alone
    # the flood cannot decide the canary: a wrong-labelled flood is cut to its share
    assert capped_per_key(["k"] * 5, share=0.1).tolist() == [True, False, False, False, False]


def test_the_sequential_interval_is_wider_than_welchs_and_covers_under_peeking() -> None:
    """Read after every 50 outcomes up to 3,000 per arm on equal arms: Welch's interval
    excludes the true difference (0) at some look in far more than 5 % of 400 runs; the
    confidence sequence stays within its 5 %."""
    rng = np.random.default_rng(7)
    looks = range(100, 3001, 50)
    welch_miss = sequential_miss = 0
    for _ in range(400):
        a, b = (rng.random(3000) < 0.9).astype(float), (rng.random(3000) < 0.9).astype(float)
        welch_miss += any(
            not (lo <= 0 <= hi) for lo, hi in (welch(a[:n], b[:n], 0.95)[1:3] for n in looks)
        )
        sequential_miss += any(
            not (lo <= 0 <= hi)
            for lo, hi in (sequential(a[:n], b[:n], 0.95, 1000)[1:] for n in looks)
        )
    assert welch_miss / 400 > 0.15 and sequential_miss / 400 <= 0.05, (welch_miss, sequential_miss)
    a, b = outcomes(0.9, 2000, 1), outcomes(0.9, 2000, 2)
    _, welch_low, welch_high, _ = welch(a, b, 0.95)
    _, low, high = sequential(a, b, 0.95, 1000)
    assert 1.2 < (high - low) / (welch_high - welch_low) < 2.0


def test_a_clear_winner_is_promoted_early_and_a_clear_loser_rolled_back() -> None:
    better = analyse(
        decisions(0.97, 400, 1), decisions(0.85, 400, 2), SEQUENTIAL, ACCURACY, CLASSES
    )
    assert better.verdict == "promote" and better.ci_low > 0 and better.p_value is None
    worse = analyse(decisions(0.7, 400, 1), decisions(0.9, 400, 2), SEQUENTIAL, ACCURACY, CLASSES)
    assert worse.verdict == "rollback" and worse.ci_high < 0
    # Equal arms need more outcomes than Welch would to show non-inferiority
    patient = CanaryPolicy(min_samples=100, max_samples=20_000, margin=0.02)
    equal = analyse(decisions(0.9, 8000, 1), decisions(0.9, 8000, 2), patient, ACCURACY, CLASSES)
    assert equal.verdict == "advance" and equal.ci_low > -0.02, equal.reason
    unsure = analyse(decisions(0.9, 300, 1), decisions(0.9, 300, 2), SEQUENTIAL, ACCURACY, CLASSES)
    assert unsure.verdict == "wait"


BANDIT = CanaryPolicy(min_samples=100, max_samples=5000, margin=0.02, mode="bandit")


def exactly(right: int, n: int) -> Arm:
    """An arm right on exactly `right` of its `n` outcomes."""
    labels = ["1"] * n
    return Arm(labels, one_hot(["1"] * right + ["0"] * (n - right), CLASSES))


def test_the_bandit_shares_traffic_by_the_chance_the_challenger_is_better() -> None:
    """Between stops the challenger's share is P(better) under the normal posterior of the
    difference, within [first step, 1 - champion floor]; the stops are the sequential
    interval's (the same numbers as `sequential`)."""
    ahead = analyse(exactly(276, 300), exactly(270, 300), BANDIT, ACCURACY, CLASSES)
    behind = analyse(exactly(264, 300), exactly(270, 300), BANDIT, ACCURACY, CLASSES)
    far_behind = analyse(exactly(255, 300), exactly(270, 300), BANDIT, ACCURACY, CLASSES)
    for decision in (ahead, behind, far_behind):
        assert decision.verdict == "advance" and decision.weight is not None, decision.reason
    a, b = np.r_[np.ones(276), np.zeros(24)], np.r_[np.ones(270), np.zeros(30)]
    se = np.sqrt(a.var(ddof=1) / 300 + b.var(ddof=1) / 300)
    assert ahead.probability_better == pytest.approx(stats.norm.cdf(0.02 / se))
    assert ahead.weight == pytest.approx(min(ahead.probability_better, 0.75))
    assert behind.weight == pytest.approx(behind.probability_better)
    assert 0.05 < behind.weight < 0.5
    assert far_behind.probability_better < 0.05 and far_behind.weight == 0.05
    same = analyse(exactly(276, 300), exactly(270, 300), SEQUENTIAL, ACCURACY, CLASSES)
    assert (ahead.ci_low, ahead.ci_high) == (same.ci_low, same.ci_high)


def test_the_bandit_stops_on_the_sequential_interval() -> None:
    worse = analyse(decisions(0.7, 400, 1), decisions(0.9, 400, 2), BANDIT, ACCURACY, CLASSES)
    assert worse.verdict == "rollback" and worse.ci_high < 0 and worse.weight is None
    better = analyse(decisions(0.97, 400, 1), decisions(0.85, 400, 2), BANDIT, ACCURACY, CLASSES)
    assert better.verdict == "promote" and better.ci_low > -0.02
    capped = CanaryPolicy(min_samples=100, max_samples=300, margin=0.001, mode="bandit")
    stuck = analyse(decisions(0.9, 300, 5), decisions(0.9, 300, 6), capped, ACCURACY, CLASSES)
    assert stuck.verdict == "rollback" and "inconclusive" in stuck.reason
