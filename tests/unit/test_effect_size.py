"""The effect-size gate (`driftloop.effect_size`) on real streams: calm windows stay inside
the reference's own window-to-window variation, a real covariate shift does not."""

import math

import pandas as pd
import pytest

from driftloop.effect_size import effect, effect_sizes, gated
from driftloop.monitoring import ColumnDrift, DriftResult
from driftloop.simulate import DriftPlan, LoanStream

CATEGORICAL = ["elevel", "car", "zipcode"]


def _frames(window: int, shifted: bool) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    stream = LoanStream(seed=4)
    reference = stream.take_frame(5000, "label").drop(columns="label")
    if shifted:
        stream.plan = DriftPlan(covariate_shift_at=stream.position)
    current = stream.take_frame(window, "label").drop(columns="label")
    numerical = [c for c in reference.columns if c not in CATEGORICAL]
    return reference, current, numerical


def _all_flagged(columns: list[str]) -> DriftResult:
    """What Evidently says on a noisy small window at worst: every feature drifted."""
    flagged = tuple(ColumnDrift(c, "wasserstein", 0.2, 0.1, True) for c in columns)
    return DriftResult(flagged, 1.0, 240, 5000, "")


@pytest.mark.parametrize("window", [240, 3000])
def test_calm_windows_stay_within_their_bounds(window: int) -> None:
    reference, current, numerical = _frames(window, shifted=False)
    sizes = effect_sizes(reference, current, numerical, CATEGORICAL, seed=0)
    assert not [c for c in reference.columns if sizes.beyond(c)]
    assert gated(_all_flagged(list(reference.columns)), sizes).share_drifted == 0.0


def test_a_covariate_shift_is_beyond_the_bounds_of_the_features_it_moves() -> None:
    reference, current, numerical = _frames(240, shifted=True)
    sizes = effect_sizes(reference, current, numerical, CATEGORICAL, seed=0)
    moved = {c for c in reference.columns if sizes.beyond(c)}
    assert {"salary", "age"} <= moved  # the two marginals the simulator's shift favours
    result = gated(_all_flagged(list(reference.columns)), sizes)
    assert result.drifted_columns == [c for c in reference.columns if c in moved]
    assert result.share_drifted == pytest.approx(len(moved) / len(reference.columns))


def test_bounds_shrink_with_the_window_and_effects_have_their_units() -> None:
    reference, small, numerical = _frames(240, shifted=False)
    _, large, _ = _frames(3000, shifted=False)
    at_240 = effect_sizes(reference, small, numerical, CATEGORICAL, seed=0).bound
    at_3000 = effect_sizes(reference, large, numerical, CATEGORICAL, seed=0).bound
    assert all(at_3000[c] < at_240[c] for c in reference.columns)
    doubled = reference["salary"] + 2 * reference["salary"].std(ddof=0)
    assert effect(reference["salary"], doubled, numeric=True) == pytest.approx(2.0, rel=1e-6)
    assert effect(pd.Series(["a"] * 10), pd.Series(["b"] * 10), numeric=False) == 1.0
    assert math.isnan(effect(pd.Series([1.0]), pd.Series([None], dtype=float), numeric=True))
