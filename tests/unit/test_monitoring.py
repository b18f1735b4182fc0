import os
import time

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from driftloop.data import BatchStore
from driftloop.metrics import metric_named
from driftloop.monitoring import (
    drift_sample,
    error_changes,
    feature_drift,
    join_feedback,
    join_labels,
    landed_labels,
    live_quality,
    model_frame,
    null_shares,
    quality_drop,
)
from driftloop.simulate import DriftPlan, LoanStream

NUMERICAL = ["salary", "commission", "age", "hvalue", "hyears", "loan"]
CATEGORICAL = ["elevel", "car", "zipcode"]
T0 = pd.Timestamp("2026-01-01", tz="UTC")


def at(seconds: float) -> pd.Timestamp:
    return T0 + pd.Timedelta(seconds=seconds)


def test_covariate_shift_is_detected_and_calm_data_is_not() -> None:
    reference = LoanStream(seed=1).take_frame(3000, "label")
    calm = LoanStream(seed=2).take_frame(1000, "label")
    shifted = LoanStream(seed=3, plan=DriftPlan(covariate_shift_at=0)).take_frame(1000, "label")
    quiet = feature_drift(reference, calm, NUMERICAL, CATEGORICAL)
    loud = feature_drift(reference, shifted, NUMERICAL, CATEGORICAL)
    assert quiet.share_drifted < 0.3
    assert {"salary", "age"} <= set(loud.drifted_columns)
    assert loud.share_drifted > quiet.share_drifted
    assert "<html" in loud.html.lower()


def test_drift_and_null_share_on_frames_with_nulls_and_bools() -> None:
    """Training rows as the model takes them (NaN, None, bools as floats) against served
    rows as the log reads back (bools as True/False/None objects, " " for a blank field)."""
    rng = np.random.default_rng(5)
    n = 2000

    def blank(values: np.ndarray, share: float) -> np.ndarray:
        values = values.astype(object)
        values[rng.random(len(values)) < share] = None
        return values

    training = pd.DataFrame(
        {
            "amount": blank(rng.normal(0, 1, n), 0.05).astype(float),
            "city": blank(rng.choice(["a", "b", "c"], n), 0.05),
            "member": blank((rng.random(n) < 0.5).astype(float), 0.05).astype(float),
            "score": rng.normal(0, 1, n),
        }
    )
    served = pd.DataFrame(
        {
            "amount": blank(rng.normal(2, 1, 800), 0.05),
            "city": np.where(rng.random(800) < 0.4, " ", rng.choice(["a", "b", "c"], 800)),
            "member": blank(rng.random(800) < 0.5, 0.05),
            "score": np.full(800, np.nan),  # the client stopped sending it
        }
    )
    features, text = list(training.columns), ["city"]
    reference, current = model_frame(training, features, text), model_frame(served, features, text)
    assert current["member"].dtype == np.float64 and set(current["member"].dropna()) == {0.0, 1.0}
    assert current["city"].isna().mean() == pytest.approx(0.4, abs=0.05)

    result = feature_drift(reference, current, ["amount", "score"], ["city", "member"])
    assert result.drifted_columns == ["amount"]
    assert [c.column for c in result.columns] == ["amount", "city", "member"]
    assert result.unjudged == ("score",)
    assert result.share_drifted == pytest.approx(1 / 3)

    nulls = null_shares(reference, current, features, tolerance=0.1)
    assert nulls.training["amount"] == pytest.approx(0.05, abs=0.02)
    assert nulls.served["score"] == 1.0 and nulls.training["score"] == 0.0
    assert nulls.jumps == ["city", "score"]
    assert null_shares(reference, current, features, tolerance=0.5).jumps == ["score"]


def test_quality_per_version_and_log_loss_from_an_old_log() -> None:
    """A log written before `probabilities` and `id` existed: two classes are enough to
    recover both probabilities from the predicted one."""
    predictions = pd.DataFrame(
        {
            "request_id": ["a", "b", "c", "d"],
            "at": pd.date_range("2026-01-01", periods=4, freq="s", tz="UTC"),
            "model_version": ["1", "1", "2", "2"],
            "prediction": ["1", "0", "1", "1"],
            "probability": [0.9, 0.8, 0.6, 0.7],
        }
    )
    feedback = pd.DataFrame({"request_id": ["a", "b", "c", "x"], "label": ["1", "1", "0", "1"]})
    feedback = feedback.assign(at=at(10))
    joined = join_feedback(predictions, feedback)
    assert list(joined["request_id"]) == ["a", "b", "c"]
    by_version = {
        q.model_version: q for q in live_quality(joined, metric_named("log_loss"), ["0", "1"])
    }
    assert by_version["1"].count == 2 and by_version["1"].accuracy == 0.5
    assert by_version["1"].metric == "log_loss"
    assert np.isclose(by_version["1"].score, -(np.log(0.9) + np.log(0.2)) / 2)
    assert by_version["2"].accuracy == 0.0
    assert np.isclose(by_version["2"].score, -np.log(0.4))
    # more than two classes: the old log cannot say, accuracy still can
    (three,) = live_quality(joined, metric_named("log_loss"), ["0", "1", "2"])[:1]
    assert np.isnan(three.score) and three.accuracy == 0.5


def test_feedback_joins_by_request_id_or_by_the_id_served_most_recently_before_it() -> None:
    predictions = pd.DataFrame(
        {
            "request_id": ["r1", "r2", "r3", "r4", "r5"],
            "index": 0,
            "id": ["loan-7", None, "loan-7", "loan-9", "loan-8"],
            "at": [at(0), at(1), at(10), at(20), at(30)],
            "model_version": "1",
            "prediction": ["1", "0", "0", "1", "1"],
            "probability": 0.8,
        }
    )
    feedback = pd.DataFrame(
        {
            "request_id": ["r2", None, None, "r2", None, None, None],
            "id": [None, "loan-7", "loan-7", None, "loan-9", "loan-8", "never-served"],
            "at": [at(2), at(5), at(15), at(16), at(25), at(29), at(40)],
            "label": ["0", "1", "1", "1", "0", "0", "1"],
        }
    )
    result = join_labels(predictions, {"feedback": feedback})
    labels = dict(zip(result.rows["request_id"], result.rows["label"], strict=True))
    # loan-7 at 5 s answers r1 (served at 0 s); at 15 s, r3 (served again at 10 s).
    # r2's second label comes later: the first wins. loan-8 is labelled before it was served.
    assert labels == {"r1": "1", "r2": "0", "r3": "1", "r4": "0"}
    assert list(result.rows["label_source"]) == ["feedback"] * 4
    assert result.unmatched == 2  # loan-8 (too early) and never-served; r2's second matched
    assert result.repeated == 1  # r2's second label: counted, not applied
    # No traffic in the window (read_log gives a frame without columns): all unmatched.
    nothing = join_labels(pd.DataFrame(), {"feedback": feedback, "batches": pd.DataFrame()})
    assert nothing.rows.empty and nothing.unmatched == len(feedback)
    assert live_quality(nothing.rows, metric_named("log_loss"), ["0", "1"]) == []
    # A log from before feedback carried ids joins by request id alone.
    old = feedback[feedback["request_id"].notna()].drop(columns=["id"])
    assert list(join_feedback(predictions.drop(columns=["id"]), old)["request_id"]) == ["r2"]


def test_labelled_batches_landed_later_join_by_their_id_column(tmp_path) -> None:
    store = BatchStore(tmp_path / "batches")
    now = time.time()
    served_at = pd.Timestamp(now - 600, unit="s", tz="UTC")
    predictions = pd.DataFrame(
        {
            "request_id": ["r1", "r2", "r3"],
            "id": ["17", "18", "19"],
            "at": [served_at, served_at, served_at],
            "model_version": "1",
            "prediction": ["1", "1", "0"],
            "probability": 0.9,
        }
    )
    feedback = pd.DataFrame({"request_id": ["r2"], "at": [served_at], "label": ["0"]})
    old = pd.DataFrame({"loan_id": [17], "x": [1.0], "label": [0]})
    store.write("old", old)
    os.utime(store.path("old"), (now - 7200, now - 7200))  # landed before the window
    store.write("no-ids", pd.DataFrame({"x": [1.0], "label": [0]}))  # before ids were configured
    # an integer id read back as float (a null in the column): 17.0 must still join "17"
    landed = pd.DataFrame({"loan_id": [17.0, 18.0, 99.0, None], "x": 1.0, "label": [1, 1, 0, 1]})
    store.write("labels", landed)
    labels = landed_labels(store, ("loan_id",), "label", since=now - 900)
    assert list(labels["id"]) == ["17", "18", "99"]

    result = join_labels(predictions, {"feedback": feedback, "batches": labels})
    rows = result.rows.set_index("request_id")
    assert rows.loc["r1", ["label", "label_source"]].tolist() == ["1", "batches"]
    assert rows.loc["r2", ["label", "label_source"]].tolist() == ["0", "feedback"]  # it wins
    assert "r3" not in rows.index
    assert result.unmatched == 1  # loan 99 was never served


def test_live_roc_auc_and_a_drop_in_its_direction() -> None:
    rng = np.random.default_rng(3)
    n = 400
    truth = rng.random(n) < 0.3
    # informative scores for the first half, noise after the change
    p1 = np.where(
        np.arange(n) < n // 2, np.clip(truth * 0.5 + rng.random(n) * 0.5, 0, 1), rng.random(n)
    )
    classes = ["0", "1"]
    joined = pd.DataFrame(
        {
            "at": [at(i) for i in range(n)],
            "model_version": "3",
            "prediction": np.where(p1 >= 0.5, "1", "0"),
            "probability": np.maximum(p1, 1 - p1),
            "probabilities": [[1 - p, p] for p in p1],
            "label": np.where(truth, "1", "0"),
        }
    )
    (quality,) = live_quality(joined, metric_named("roc_auc"), classes)
    assert quality.metric == "roc_auc"
    assert quality.score == pytest.approx(roc_auc_score(truth, p1))
    assert quality.accuracy == pytest.approx(float(((p1 >= 0.5) == truth).mean()))

    auc = quality_drop(joined, n // 2, metric_named("roc_auc"), classes)
    assert auc.metric == "roc_auc" and auc.before > 0.9 and auc.after < 0.65
    assert auc.drop == pytest.approx(auc.before - auc.after)
    loss = quality_drop(joined, n // 2, metric_named("log_loss"), classes)
    assert loss.after > loss.before and loss.drop == pytest.approx(loss.after - loss.before)
    # one class before the change: no AUC there, so the drop is measured in accuracy
    one_class = joined.assign(label=np.where(np.arange(n) < 50, "1", joined["label"]))
    fallback = quality_drop(one_class, 50, metric_named("roc_auc"), classes)
    assert fallback.metric == "accuracy"
    assert fallback.before == pytest.approx((one_class["prediction"][:50] == "1").mean())


def test_detectors_name_the_change_after_onset() -> None:
    rng = np.random.default_rng(0)
    errors = np.concatenate([rng.random(2000) < 0.08, rng.random(1000) < 0.4])
    found = error_changes(errors.astype(int))
    assert found.adwin is not None and 2000 <= found.adwin < 2400
    assert found.page_hinkley is not None and 2000 <= found.page_hinkley < 2500
    calm = error_changes((rng.random(3000) < 0.08).astype(int))
    assert calm.first is None


def test_the_drift_sample_is_seeded_bounded_and_keeps_the_verdict() -> None:
    reference = LoanStream(seed=1).take_frame(1500, "label")  # > 1000: Evidently's distances
    shifted = LoanStream(seed=3, plan=DriftPlan(covariate_shift_at=0)).take_frame(4000, "label")
    sample = drift_sample(shifted, 1200, seed=42)
    assert len(sample) == 1200 and sample.index.is_monotonic_increasing
    assert sample.equals(drift_sample(shifted, 1200, seed=42))
    assert not sample.index.equals(drift_sample(shifted, 1200, seed=43).index)
    assert set(sample.index) <= set(shifted.index)
    assert drift_sample(shifted, 4000, seed=42) is shifted  # small enough: every row
    numerical, categorical = ["salary", "age", "loan"], ["car"]  # two shifted, two not
    whole = feature_drift(reference, shifted, numerical, categorical)
    sampled = feature_drift(reference, sample, numerical, categorical)
    assert whole.drifted_columns == sampled.drifted_columns == ["salary", "age"]


def _river_changes(errors: np.ndarray, rising_only: bool) -> tuple[int | None, int | None]:
    """The detectors as river runs them, sample by sample: what `error_changes` must find."""
    from river import drift

    adwin, hinkley = drift.ADWIN(), drift.PageHinkley(mode="up" if rising_only else "both")
    first: list[int | None] = [None, None]
    for index, value in enumerate(errors.astype(float)):
        before = adwin.estimation
        adwin.update(value)
        hinkley.update(value)
        rose = not rising_only or adwin.estimation > before
        if adwin.drift_detected and rose and first[0] is None:
            first[0] = index
        if hinkley.drift_detected and first[1] is None:
            first[1] = index
    return first[0], first[1]


@pytest.mark.parametrize("seed", range(6))
def test_error_changes_match_river(seed: int) -> None:
    """0/1 errors and scaled regression errors, falling before rising (ADWIN's first cut is
    then not a rise), calm or not: the same first samples as river's own detectors."""
    rng = np.random.default_rng(seed)
    rates = rng.permutation([0.05, 0.3, 0.1, 0.5])[: 2 + seed % 3]
    wrong = np.concatenate([rng.random(1500) < rate for rate in rates]).astype(int)
    scaled = np.clip(np.abs(rng.normal(0, np.repeat(rates, 1500), len(rates) * 1500)), 0, 1)
    for errors in (wrong, scaled, (rng.random(3000) < 0.1).astype(int)):
        for rising_only in (True, False):
            found = error_changes(errors, rising_only)
            assert (found.adwin, found.page_hinkley) == _river_changes(errors, rising_only)
            assert found.samples == len(errors)
