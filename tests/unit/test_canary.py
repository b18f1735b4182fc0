import numpy as np

from driftloop.canary import CanaryPolicy, analyse, next_weight, welch

POLICY = CanaryPolicy(min_samples=100, max_samples=3000, margin=0.02, confidence=0.95)


def outcomes(accuracy: float, n: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random(n) < accuracy).astype(float)


def test_equal_models_advance() -> None:
    decision = analyse(outcomes(0.9, 2000, 1), outcomes(0.9, 2000, 2), POLICY)
    assert decision.verdict == "advance"
    assert decision.ci_low > -0.02 and decision.ci_low < decision.difference < decision.ci_high


def test_clearly_worse_challenger_rolls_back() -> None:
    decision = analyse(outcomes(0.6, 300, 1), outcomes(0.9, 3000, 2), POLICY)
    assert decision.verdict == "rollback" and decision.ci_high < 0
    assert decision.p_value < 0.001 and decision.effect_size < -0.5


def test_too_few_samples_waits() -> None:
    decision = analyse(outcomes(0.5, 40, 1), outcomes(0.9, 2000, 2), POLICY)
    assert decision.verdict == "wait" and "need 100 each" in decision.reason


def test_guards_roll_back_before_statistics() -> None:
    worse_latency = analyse(outcomes(0.9, 10, 1), outcomes(0.9, 10, 2), POLICY, 0.0, 900.0)
    errors = analyse(outcomes(0.9, 10, 1), outcomes(0.9, 10, 2), POLICY, 0.2, 0.0)
    assert worse_latency.verdict == errors.verdict == "rollback"
    assert "p99 latency" in worse_latency.reason and "error rate" in errors.reason


def test_inconclusive_at_the_sample_cap_rolls_back() -> None:
    slightly_worse = analyse(outcomes(0.875, 3000, 1), outcomes(0.9, 3000, 2), POLICY)
    assert slightly_worse.verdict in {"rollback"}
    assert "inconclusive" in slightly_worse.reason or "significantly" in slightly_worse.reason


def test_welch_matches_scipy_interval_width() -> None:
    a, b = outcomes(0.8, 500, 3), outcomes(0.85, 800, 4)
    diff, low, high, p = welch(a, b, 0.95)
    assert np.isclose(diff, a.mean() - b.mean()) and low < diff < high and 0 < p < 1


def test_steps_walk_to_promotion() -> None:
    steps = (0.05, 0.25, 0.5, 1.0)
    assert [next_weight(w, steps) for w in (0.0, 0.05, 0.25, 0.5)] == [0.05, 0.25, 0.5, 1.0]
