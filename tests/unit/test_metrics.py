"""The metrics: scikit-learn's numbers, each metric's direction, and labels as logs hold them."""

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    f1_score,
    log_loss,
    roc_auc_score,
)

from driftloop.metrics import METRICS, all_scores, default_metric, metric_named

RNG = np.random.default_rng(0)
Y = RNG.integers(0, 2, 200)
P1 = np.clip(0.3 * Y + RNG.random(200) * 0.7, 0.01, 0.99)
BINARY = np.column_stack([1 - P1, P1])


def test_binary_scores_are_scikit_learns_with_classes_1_positive() -> None:
    scores = all_scores(Y, BINARY, [0, 1])
    predicted = (P1 > 0.5).astype(int)
    assert scores == pytest.approx(
        {
            "accuracy": accuracy_score(Y, predicted),
            "balanced_accuracy": balanced_accuracy_score(Y, predicted),
            "roc_auc": roc_auc_score(Y, P1),
            "pr_auc": average_precision_score(Y, P1),
            "f1": f1_score(Y, predicted),
            "log_loss": log_loss(Y, BINARY),
        }
    )


def test_string_labels_from_a_log_and_list_probabilities_score_alike() -> None:
    """Logs hold labels as strings and probabilities as lists; the schema's classes are ints."""
    as_logged = [str(v) for v in Y], BINARY.tolist()
    for name, metric in METRICS.items():
        if "binary" not in metric.tasks:
            continue
        assert metric.score(*as_logged, (0, 1)) == pytest.approx(metric.score(Y, BINARY, [0, 1])), (
            name
        )


def test_string_classes_take_the_second_as_positive() -> None:
    labels = np.where(Y == 1, "yes", "no")
    assert metric_named("f1").score(labels, BINARY, ["no", "yes"]) == f1_score(Y, P1 > 0.5)
    assert metric_named("roc_auc").score(labels, BINARY, ["no", "yes"]) == roc_auc_score(Y, P1)


def test_multiclass_roc_auc_is_one_vs_rest_macro_and_f1_macro() -> None:
    y = RNG.integers(0, 3, 300)
    p = RNG.dirichlet(np.ones(3), 300)
    p[np.arange(300), y] += 0.5
    p /= p.sum(axis=1, keepdims=True)
    scores = all_scores(y, p, [0, 1, 2])
    assert scores["roc_auc"] == pytest.approx(
        roc_auc_score(y, p, multi_class="ovr", average="macro")
    )
    assert scores["f1"] == pytest.approx(f1_score(y, p.argmax(axis=1), average="macro"))
    assert set(scores) == {n for n, m in METRICS.items() if "multiclass" in m.tasks}


def test_direction_is_in_gain() -> None:
    assert metric_named("roc_auc").gain(0.9, 0.8) == pytest.approx(0.1)
    assert metric_named("log_loss").gain(0.2, 0.3) == pytest.approx(0.1)  # lower is better
    assert metric_named("log_loss").gain(0.3, 0.2) < 0
    assert [m.direction for m in (metric_named("accuracy"), metric_named("log_loss"))] == [
        "maximize",
        "minimize",
    ]


def test_ranking_metrics_need_every_class() -> None:
    ones = ["1"] * 10
    scores = all_scores(ones, BINARY[:10], [0, 1])
    assert "roc_auc" not in scores and "pr_auc" not in scores and "accuracy" in scores
    with pytest.raises(ValueError, match="roc_auc is not defined"):
        metric_named("roc_auc").score(ones, BINARY[:10], [0, 1])


def test_bad_input_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="choose one of accuracy"):
        metric_named("auc")
    with pytest.raises(ValueError, match=r"labels \['2'\] are not among"):
        metric_named("accuracy").score([0, 2], BINARY[:2], [0, 1])
    with pytest.raises(ValueError, match="shape"):
        metric_named("accuracy").score([0, 1], BINARY[:3], [0, 1])


@pytest.mark.parametrize(
    ("task", "counts", "metric"),
    [
        ("binary", {0: 500, 1: 500}, "accuracy"),
        ("binary", {0: 750, 1: 250}, "accuracy"),
        ("binary", {"no": 920, "yes": 80}, "roc_auc"),
        ("multiclass", {0: 59, 1: 71, 2: 48}, "accuracy"),  # wine
        ("multiclass", {i: 100 for i in range(10)}, "accuracy"),  # ten even classes
        ("multiclass", {0: 900, 1: 80, 2: 20}, "balanced_accuracy"),
    ],
)
def test_default_metric_by_task_and_balance(task: str, counts: dict, metric: str) -> None:
    assert default_metric(task, counts) == metric


@pytest.mark.parametrize("name", ["accuracy", "log_loss"])
def test_per_request_outcomes_average_to_the_score(name: str) -> None:
    metric = metric_named(name)
    assert metric.per_row is not None
    assert metric.per_row(Y, BINARY).mean() == pytest.approx(metric.score(Y, BINARY, [0, 1]))
