"""The champion's live metric against its own holdout score (`monitoring.holdout_drop`), on
the loop's own pipeline and real loans."""

import time

import numpy as np
import pandas as pd
import pytest

from driftloop.metrics import metric_named
from driftloop.monitoring import holdout_drop
from driftloop.schema import infer_schema
from driftloop.simulate import LoanStream
from driftloop.training import DEFAULT_TRIALS, make_model

CLASSES = ["0", "1"]


@pytest.fixture(scope="module")
def served() -> tuple[pd.DataFrame, dict[str, float]]:
    """4,000 served loans as the prediction log holds them, with their labels, and the
    holdout scores of the model that served them (on 1,000 rows it never saw)."""
    stream = LoanStream(seed=8)
    train, holdout, live = (stream.take_frame(n, "label") for n in (3000, 1000, 4000))
    model = make_model(DEFAULT_TRIALS["classification"][0], infer_schema(train, "label"), 0)
    model.fit(train.drop(columns="label"), train["label"])
    scores = {}
    for name in ("accuracy", "roc_auc"):
        probabilities = model.predict_proba(holdout.drop(columns="label"))
        scores[name] = metric_named(name).score(
            holdout["label"].astype(str), probabilities, CLASSES
        )
    probabilities = model.predict_proba(live.drop(columns="label"))
    rows = pd.DataFrame(
        {
            "label": live["label"].astype(str),
            "prediction": model.classes_[probabilities.argmax(axis=1)].astype(str),
            "probability": probabilities.max(axis=1),
            "probabilities": probabilities.tolist(),
        }
    )
    return rows, scores


@pytest.mark.parametrize("name", ["accuracy", "roc_auc"])
def test_unchanged_traffic_is_not_below_its_holdout(served, name: str) -> None:
    rows, scores = served
    found = holdout_drop(rows, metric_named(name), CLASSES, scores[name], 1000, seed=0)
    assert found is not None and found.rows == 4000
    assert not found.beyond(0.01), found


@pytest.mark.parametrize("name", ["accuracy", "roc_auc"])
def test_a_steady_few_point_drop_is_beyond_chance(served, name: str) -> None:
    rows, scores = served
    flipped = np.random.default_rng(2).random(len(rows)) < 0.04  # ~3 points of accuracy
    worse = rows.assign(
        label=np.where(flipped, np.where(rows["label"] == "1", "0", "1"), rows["label"])
    )
    started = time.perf_counter()
    found = holdout_drop(worse, metric_named(name), CLASSES, scores[name], 1000, seed=0)
    elapsed = time.perf_counter() - started
    assert found.drop > found.bound and found.beyond(0.01), found
    assert elapsed < 2.0  # the live-quality run's budget; measured ~0.1 s


def test_the_textbook_error_of_accuracy_and_too_few_rows(served) -> None:
    rows, scores = served
    found = holdout_drop(rows, metric_named("accuracy"), CLASSES, scores["accuracy"], None, 0)
    p = found.live
    assert found.bound == pytest.approx(2 * np.sqrt(p * (1 - p) / len(rows)), rel=1e-3)
    assert holdout_drop(rows.head(50), metric_named("accuracy"), CLASSES, 0.9, 1000, 0) is None


def test_the_bootstrap_auc_from_ranks_is_scikit_learns() -> None:
    """Binary ROC AUC of every resample at once (ranks) against `roc_auc_score` on each,
    with tied scores and a resample of one class (left out by both)."""
    from driftloop.monitoring import _resampled_scores

    rng = np.random.default_rng(3)
    truth = (rng.random(300) < 0.3).astype(int)
    top = np.round(np.clip(0.3 + 0.4 * truth + rng.normal(0, 0.25, 300), 0, 1), 2)  # ties
    output = np.column_stack([1 - top, top])
    one_class = rng.choice(np.flatnonzero(truth), 200)
    picks = np.stack([*(rng.integers(0, 300, 200) for _ in range(40)), one_class])
    metric = metric_named("roc_auc")
    fast = _resampled_scores(metric, truth, output, 2, picks)
    slow = [metric.scorer(truth[p], output[p], 2) for p in picks if len(set(truth[p])) == 2]
    assert len(fast) == len(slow) == 40
    assert fast == pytest.approx(slow, rel=1e-12, abs=1e-12)
