"""Accuracy before labels arrive: what a classifier's own calibrated confidence says it is.

Labels come hours or days after the predictions, while a covariate shift is in the inputs at
once. Under covariate shift (P(x) moves, P(y | x) does not) a calibrated model's confidence
in its top class is its chance of being right, so the mean over served traffic estimates
its accuracy without a single label (confidence-based performance estimation, CBPE, for the
accuracy metric). Boosted trees are over-confident, so the map from top-class probability to
"was right" is fitted at registration on the holdout rows (never seen by the fit) by
isotonic regression, and stored on the version as its values on a fixed grid of
confidences: a tag the MLflow UI shows and any reader can apply with `np.interp`.

What it cannot see: a concept change keeps the inputs (and the confidence) where they were
while the answers go wrong, so the estimate stays high. A realized accuracy well below the
estimate is therefore evidence of concept drift, reported as `estimate_gap`.

A regressor has no confidence to calibrate (direct loss estimation needs a second model
trained on the first one's errors); its estimate is reported as not available.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.isotonic import IsotonicRegression

from driftloop.training import classes_of, model_output

TAG_CALIBRATION = "driftloop.confidence_calibration"
GRID = np.linspace(0.0, 1.0, 21)
# Fewer holdout rows than this give an isotonic map with a handful of steps: no estimate.
MIN_CALIBRATION_ROWS = 50
# Fewer served predictions than this in a window give no estimate (its standard error
# would be ~1/sqrt(n) of a Bernoulli, over 7 points).
MIN_ESTIMATE_ROWS = 50
# Standard deviations before a difference counts (~2.3 % one-sided by chance).
Z = 2.0


def confidence_calibration(model: Any, x: pd.DataFrame, y: pd.Series) -> list[float] | None:
    """P(right | top-class probability) on `GRID`, from held-out rows; None for a regressor
    or too few rows."""
    classes = classes_of(model)
    if not classes or len(x) < MIN_CALIBRATION_ROWS:
        return None
    probabilities = model_output(model, x)
    confidence = probabilities.max(axis=1)
    predicted = np.asarray(classes, dtype=object)[probabilities.argmax(axis=1)]
    right = np.asarray([str(p) == str(t) for p, t in zip(predicted, y, strict=True)], dtype=float)
    isotonic = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(confidence, right)
    return [round(float(v), 4) for v in isotonic.predict(GRID)]


def calibration_tag(calibration: list[float]) -> str:
    return json.dumps(calibration, separators=(",", ":"))


def parse_calibration(tag: str | None) -> np.ndarray | None:
    """The calibration a version carries, or None (registered before it existed, or a
    regressor); a tag of the wrong shape is treated as absent, never guessed at."""
    if not tag:
        return None
    try:
        values = np.asarray(json.loads(tag), dtype=float)
    except (ValueError, TypeError):
        return None
    return values if values.shape == GRID.shape and np.isfinite(values).all() else None


@dataclass(frozen=True)
class Estimate:
    """Estimated accuracy over `rows` served predictions: `standard_error` is the estimate's
    own sampling error; `spread` is how far the realized accuracy of those same rows should
    stray from it (one standard deviation) if the calibration holds."""

    accuracy: float
    standard_error: float
    spread: float
    rows: int

    def below(self, reference: float, threshold: float, z: float = Z) -> bool:
        """Lower than `reference` by more than `threshold`, beyond z standard errors."""
        return reference - self.accuracy > max(threshold, z * self.standard_error)


def estimate_accuracy(confidence: np.ndarray, calibration: np.ndarray) -> Estimate | None:
    """Mean calibrated confidence of served predictions; None below `MIN_ESTIMATE_ROWS`."""
    confidence = confidence[np.isfinite(confidence)]
    if len(confidence) < MIN_ESTIMATE_ROWS:
        return None
    calibrated = np.interp(confidence, GRID, calibration)
    rows = len(calibrated)
    # Each prediction is right with probability p: the count's variance is sum p (1 - p).
    spread = math.sqrt(float(np.sum(calibrated * (1 - calibrated)))) / rows
    standard_error = float(calibrated.std(ddof=1)) / math.sqrt(rows)
    return Estimate(float(calibrated.mean()), standard_error, spread, rows)


def estimate_gap(realized: float, estimate: Estimate, z: float = Z) -> tuple[float, bool]:
    """Realized minus estimated accuracy on the same labelled rows, and whether it is beyond
    what chance allows a calibrated model (z spreads): far below is the concept moving."""
    gap = realized - estimate.accuracy
    return gap, abs(gap) > z * estimate.spread


def estimates_by_version(
    predictions: pd.DataFrame, calibrations: dict[str, np.ndarray]
) -> dict[str, Estimate]:
    """The estimate per served model version that carries a calibration."""
    if predictions.empty or "probability" not in predictions:
        return {}
    found = {}
    for version, rows in predictions.groupby("model_version", sort=True):
        calibration = calibrations.get(str(version))
        if calibration is None:
            continue
        confidence = pd.to_numeric(rows["probability"], errors="coerce").to_numpy(dtype=float)
        estimate = estimate_accuracy(confidence, calibration)
        if estimate is not None:
            found[str(version)] = estimate
    return found
