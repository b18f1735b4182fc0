from driftloop.promotion import MIN_RECENT_ROWS, decide
from driftloop.training import Evaluation


def ev(accuracy: float, rows: int = 1000) -> Evaluation:
    return Evaluation(accuracy=accuracy, log_loss=0.3, roc_auc=None, rows=rows)


def test_first_model_promoted_only_above_the_floor() -> None:
    assert decide("1", (ev(0.8), None), None, None, 0.01, 0.7).promote
    refused = decide("1", (ev(0.6), None), None, None, 0.01, 0.7)
    assert not refused.promote and "below the floor" in refused.reason


def test_recent_data_decides_when_there_is_enough() -> None:
    decision = decide(
        "2", (ev(0.90), ev(0.95, rows=200)), "1", (ev(0.92), ev(0.80, rows=200)), 0.01, 0.5
    )
    assert decision.promote and decision.basis == "recent"
    assert decision.challenger_score == 0.95 and decision.champion_score == 0.80


def test_holdout_decides_when_recent_is_too_small() -> None:
    small = MIN_RECENT_ROWS - 1
    decision = decide(
        "2", (ev(0.90), ev(1.0, rows=small)), "1", (ev(0.92), ev(0.5, rows=small)), 0.01, 0.5
    )
    assert not decision.promote and decision.basis == "holdout"


def test_margin_is_required() -> None:
    same = decide("2", (ev(0.905), None), "1", (ev(0.90), None), 0.01, 0.5)
    better = decide("2", (ev(0.915), None), "1", (ev(0.90), None), 0.01, 0.5)
    assert not same.promote and better.promote
    assert "gain +0.0050" in same.reason


def test_reigning_champion_is_not_judged_against_itself() -> None:
    decision = decide("3", (ev(0.9), None), "3", (ev(0.9), None), 0.0, 0.5)
    assert not decision.promote and decision.reason == "v3 is already the champion"
