import pytest

from driftloop.metrics import metric_named
from driftloop.promotion import MIN_RECENT_ROWS, decide, floor_of
from driftloop.training import Evaluation


def ev(score: float | None, rows: int = 1000, metric: str = "accuracy") -> Evaluation:
    scores = {"accuracy": 0.9, "log_loss": 0.3}
    if score is not None:
        scores[metric] = score
    elif metric in scores:
        del scores[metric]
    return Evaluation(scores=scores, metric=metric, rows=rows)


def test_first_model_promoted_only_above_the_floor() -> None:
    assert decide("1", (ev(0.8), None), None, None, 0.01, 0.7).promote
    refused = decide("1", (ev(0.6), None), None, None, 0.01, 0.7)
    assert not refused.promote and "accuracy 0.6000 is below the floor" in refused.reason


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


def test_roc_auc_promotes_a_better_model_and_refuses_a_worse_one() -> None:
    def auc(value: float) -> Evaluation:
        return ev(value, metric="roc_auc")

    better = decide("2", (auc(0.93), None), "1", (auc(0.90), None), 0.01, 0.6)
    worse = decide("2", (auc(0.88), None), "1", (auc(0.90), None), 0.01, 0.6)
    assert better.promote and better.metric == "roc_auc"
    assert "holdout roc_auc 0.9300 vs champion v1 0.9000" in better.reason
    assert "gain +0.0300" in better.reason and "higher is better" in better.reason
    assert not worse.promote and "gain -0.0200" in worse.reason


def test_log_loss_lower_is_better_and_its_floor_is_a_ceiling() -> None:
    def loss(value: float) -> Evaluation:
        return ev(value, metric="log_loss")

    better = decide("2", (loss(0.25), None), "1", (loss(0.30), None), 0.01, None)
    worse = decide("2", (loss(0.35), None), "1", (loss(0.30), None), 0.01, None)
    assert better.promote and "gain +0.0500" in better.reason
    assert "lower is better" in better.reason
    assert not worse.promote and "gain -0.0500" in worse.reason
    over = decide("1", (loss(0.70), None), None, None, 0.01, 0.6)
    under = decide("1", (loss(0.50), None), None, None, 0.01, 0.6)
    assert not over.promote and "log_loss 0.7000 is above the ceiling 0.6000" in over.reason
    assert under.promote and "passes the floor 0.6000" in under.reason
    unset = decide("1", (loss(5.0), None), None, None, 0.01, None)
    assert unset.promote and "sets no floor" in unset.reason


def test_recent_rows_without_the_metric_leave_it_to_the_holdout() -> None:
    one_class = ev(None, rows=500, metric="roc_auc")  # recent labels of one class: no ROC AUC
    decision = decide(
        "2",
        (ev(0.95, metric="roc_auc"), one_class),
        "1",
        (ev(0.90, metric="roc_auc"), one_class),
        0.01,
        0.6,
    )
    assert decision.promote and decision.basis == "holdout"


def test_a_holdout_without_the_metric_refuses() -> None:
    decision = decide("1", (ev(None, metric="roc_auc"), None), None, None, 0.0, None)
    assert not decision.promote and "roc_auc is not defined" in decision.reason


@pytest.mark.parametrize(
    ("metric", "configured", "floor"),
    [
        ("accuracy", None, 0.6),
        ("roc_auc", None, 0.6),
        ("pr_auc", None, None),
        ("log_loss", None, None),
        ("log_loss", 0.4, 0.4),
        ("f1", 0.5, 0.5),
    ],
)
def test_floor_defaults_by_metric(metric: str, configured: float | None, floor: float) -> None:
    assert floor_of(metric_named(metric), configured) == floor


def test_decision_tags_name_the_metric() -> None:
    decision = decide(
        "2", (ev(0.93, metric="roc_auc"), None), "1", (ev(0.9, metric="roc_auc"), None), 0.0, 0.5
    )
    assert decision.as_tags()["driftloop.decision.metric"] == "roc_auc"
