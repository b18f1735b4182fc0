"""Label-free accuracy (`driftloop.estimation`) on the loop's own pipeline and real streams."""

import numpy as np
import pytest

from driftloop.estimation import (
    GRID,
    MIN_ESTIMATE_ROWS,
    calibration_tag,
    confidence_calibration,
    estimate_accuracy,
    estimate_gap,
    parse_calibration,
)
from driftloop.schema import infer_schema
from driftloop.simulate import DriftPlan, LoanStream
from driftloop.training import DEFAULT_TRIALS, make_model

TARGET = "label"


@pytest.fixture(scope="module")
def calibrated():
    """The loop's default boosting pipeline on 3,000 loans, calibrated on 1,000 more."""
    stream = LoanStream(seed=3)
    train, holdout = stream.take_frame(3000, TARGET), stream.take_frame(1000, TARGET)
    model = make_model(
        DEFAULT_TRIALS["classification"][0], infer_schema(train, TARGET), seed=0
    ).fit(train.drop(columns=TARGET), train[TARGET])
    calibration = confidence_calibration(model, holdout.drop(columns=TARGET), holdout[TARGET])
    return stream, model, np.asarray(calibration), holdout


def _served(stream: LoanStream, model, rows: int):
    frame = stream.take_frame(rows, TARGET)
    probabilities = model.predict_proba(frame.drop(columns=TARGET))
    right = model.classes_[probabilities.argmax(axis=1)] == frame[TARGET].to_numpy()
    return probabilities.max(axis=1), float(right.mean())


def test_calibration_is_monotone_and_keeps_the_holdout_accuracy(calibrated) -> None:
    _, model, calibration, holdout = calibrated
    assert calibration.shape == GRID.shape and (np.diff(calibration) >= 0).all()
    confidence = model.predict_proba(holdout.drop(columns=TARGET)).max(axis=1)
    estimate = estimate_accuracy(confidence, calibration)
    accuracy = float((model.predict(holdout.drop(columns=TARGET)) == holdout[TARGET]).mean())
    # Isotonic regression keeps the mean of what it fits; the grid interpolation nearly so.
    assert estimate.accuracy == pytest.approx(accuracy, abs=0.01)
    assert parse_calibration(calibration_tag(list(calibration))) == pytest.approx(calibration)


def test_the_estimate_follows_a_covariate_shift_and_misses_a_concept_change(calibrated) -> None:
    stream, model, calibration, _ = calibrated
    stream.plan = DriftPlan(covariate_shift_at=stream.position)
    confidence, realized = _served(stream, model, 2000)
    shifted = estimate_accuracy(confidence, calibration)
    # Calibrated before the shift, so not exact after it (3.1 points here; 1.5-1.7 points
    # per 250-row window on average in scripts/bench_estimation.py), but 3x closer than
    # the concept change's gap below.
    assert abs(shifted.accuracy - realized) < 0.045

    stream.plan = DriftPlan(concept_drift_at=stream.position, drift_function=1)
    confidence, realized = _served(stream, model, 2000)
    drifted = estimate_accuracy(confidence, calibration)
    gap, beyond = estimate_gap(realized, drifted)
    assert gap < -0.1 and beyond  # the confidence did not see the concept move


def test_below_needs_the_threshold_and_the_standard_error() -> None:
    calibration = GRID.copy()  # already calibrated: confidence is the chance of being right
    estimate = estimate_accuracy(np.full(400, 0.8), calibration)
    assert estimate.accuracy == pytest.approx(0.8) and estimate.standard_error == 0
    assert estimate.below(0.9, threshold=0.05) and not estimate.below(0.84, threshold=0.05)
    noisy = estimate_accuracy(np.random.default_rng(0).uniform(0.5, 1.0, 60), calibration)
    assert noisy.standard_error > 0.015  # 60 rows spread over 0.5-1.0
    assert not noisy.below(noisy.accuracy + 0.03, threshold=0.02)  # within 2 standard errors
    assert noisy.below(noisy.accuracy + 0.05, threshold=0.02)


def test_no_estimate_without_a_valid_calibration_or_enough_rows(calibrated) -> None:
    _, model, calibration, holdout = calibrated
    assert estimate_accuracy(np.full(MIN_ESTIMATE_ROWS - 1, 0.9), calibration) is None
    for bad in (None, "", "not json", "[0.5, 0.6]", '{"a": 1}', "[" + ",".join(["NaN"] * 21) + "]"):
        assert parse_calibration(bad) is None
    few = holdout.head(10)
    assert confidence_calibration(model, few.drop(columns=TARGET), few[TARGET]) is None
