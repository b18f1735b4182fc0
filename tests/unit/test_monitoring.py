import numpy as np
import pandas as pd

from driftloop.monitoring import error_changes, feature_drift, join_feedback, live_quality
from driftloop.simulate import DriftPlan, LoanStream

FEATURES = ["salary", "commission", "age", "elevel", "car", "zipcode", "hvalue", "hyears", "loan"]


def test_covariate_shift_is_detected_and_calm_data_is_not() -> None:
    reference = LoanStream(seed=1).take_frame(3000, "label")
    calm = LoanStream(seed=2).take_frame(1000, "label")
    shifted = LoanStream(seed=3, plan=DriftPlan(covariate_shift_at=0)).take_frame(1000, "label")
    quiet = feature_drift(reference, calm, FEATURES)
    loud = feature_drift(reference, shifted, FEATURES)
    assert quiet.share_drifted < 0.3
    assert {"salary", "age"} <= set(loud.drifted_columns)
    assert loud.share_drifted > quiet.share_drifted
    assert "<html" in loud.html.lower()


def test_quality_per_version_and_log_loss() -> None:
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
    joined = join_feedback(predictions, feedback)
    assert list(joined["request_id"]) == ["a", "b", "c"]
    by_version = {q.model_version: q for q in live_quality(joined)}
    assert by_version["1"].count == 2 and by_version["1"].accuracy == 0.5
    assert np.isclose(by_version["1"].log_loss, -(np.log(0.9) + np.log(0.2)) / 2)
    assert by_version["2"].accuracy == 0.0


def test_detectors_name_the_change_after_onset() -> None:
    rng = np.random.default_rng(0)
    errors = np.concatenate([rng.random(2000) < 0.08, rng.random(1000) < 0.4])
    found = error_changes(errors.astype(int))
    assert found.adwin is not None and 2000 <= found.adwin < 2400
    assert found.page_hinkley is not None and 2000 <= found.page_hinkley < 2500
    calm = error_changes((rng.random(3000) < 0.08).astype(int))
    assert calm.first is None
