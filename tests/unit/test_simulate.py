from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

from driftloop.simulate import (
    FRIEDMAN_SHIFTED,
    DriftPlan,
    FriedmanStream,
    LoanStream,
    stream_for,
    write_batches,
)
from driftloop.storage import Folder

FEATURES = ["salary", "commission", "age", "elevel", "car", "zipcode", "hvalue", "hyears", "loan"]
X = [f"x{i}" for i in range(10)]


def test_stream_is_reproducible_and_noisy() -> None:
    one = LoanStream(seed=5).take_frame(4000, "label")
    two = LoanStream(seed=5).take_frame(4000, "label")
    pd.testing.assert_frame_equal(one, two)
    model = HistGradientBoostingClassifier(random_state=0).fit(
        one[FEATURES][:3000], one.label[:3000]
    )
    accuracy = model.score(one[FEATURES][3000:], one.label[3000:])
    assert 0.8 < accuracy < 0.99  # learnable, but perturbation keeps it from being a toy


def test_covariate_shift_moves_marginals() -> None:
    frame = LoanStream(seed=5, plan=DriftPlan(covariate_shift_at=2000)).take_frame(4000, "label")
    before, after = frame.iloc[:2000], frame.iloc[2000:]
    assert after.salary.mean() > before.salary.mean() * 1.3
    assert after.age.mean() > before.age.mean() + 10


def test_concept_drift_breaks_a_static_model() -> None:
    plan = DriftPlan(concept_drift_at=4000, drift_function=1)
    frame = LoanStream(seed=5, plan=plan).take_frame(6000, "label")
    model = HistGradientBoostingClassifier(random_state=0).fit(
        frame[FEATURES][:3000], frame.label[:3000]
    )
    before = model.score(frame[FEATURES][3000:4000], frame.label[3000:4000])
    after = model.score(frame[FEATURES][4000:], frame.label[4000:])
    assert after < before - 0.1


def test_a_regional_concept_change_is_local_and_small() -> None:
    model = HistGradientBoostingClassifier(random_state=0).fit(
        *_xy(LoanStream(seed=1).take_frame(6000, "label"))
    )
    region = ("age", 40.0, 47.0)
    plan = DriftPlan(concept_drift_at=0, concept_region=region)
    drifted = LoanStream(seed=2, plan=plan).take_frame(8000, "label")
    calm = LoanStream(seed=2).take_frame(8000, "label")
    inside = drifted["age"].between(40, 46)

    def accuracy(frame: pd.DataFrame) -> float:
        x, y = _xy(frame)
        return float((model.predict(x) == y).mean())

    assert 0.08 < inside.mean() < 0.15  # P(x) unchanged: ~7 of 61 ages
    assert accuracy(drifted[~inside]) > accuracy(calm) - 0.02  # outside: the old concept
    assert accuracy(drifted[inside]) < accuracy(calm) - 0.15  # inside: the new one
    assert 0.015 < accuracy(calm) - accuracy(drifted) < 0.05  # a few points overall


def _xy(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    return frame[FEATURES], frame["label"]


def test_write_batches_splits_rows_into_files(tmp_path: Path) -> None:
    names = write_batches(LoanStream(seed=1), 2500, 1000, Folder(tmp_path), "approved", "csv")
    assert names == sorted(names)
    assert [len(pd.read_csv(tmp_path / n)) for n in names] == [1000, 1000, 500]
    assert "approved" in pd.read_csv(tmp_path / names[0]).columns
    assert not list(tmp_path.glob(".*"))


def _rmse(model: HistGradientBoostingRegressor, frame: pd.DataFrame) -> float:
    return float(np.sqrt(np.mean((model.predict(frame[X]) - frame.label) ** 2)))


def _fit(frame: pd.DataFrame) -> HistGradientBoostingRegressor:
    return HistGradientBoostingRegressor(random_state=0).fit(frame[X], frame.label)


def test_friedman_stream_is_reproducible_numeric_and_learnable() -> None:
    one = FriedmanStream(seed=5).take_frame(4000, "label")
    pd.testing.assert_frame_equal(one, FriedmanStream(seed=5).take_frame(4000, "label"))
    assert list(one.columns) == [*X, "label"]
    assert (one.dtypes == "float64").all()
    assert one.label.nunique() == len(one)  # a continuous target: auto-detected as regression
    # Unit Gaussian noise bounds the error from below; a fitted model gets close to it.
    assert 1.0 < _rmse(_fit(one.iloc[:3000]), one.iloc[3000:]) < 1.5


def test_friedman_covariate_shift_moves_four_marginals_but_not_the_concept() -> None:
    plan = DriftPlan(covariate_shift_at=3000)
    frame = FriedmanStream(seed=5, plan=plan).take_frame(6000, "label")
    before, after = frame.iloc[:3000], frame.iloc[3000:]
    moved = [x for x in X if after[x].mean() > before[x].mean() + 0.1]
    assert moved == list(FRIEDMAN_SHIFTED)
    model = _fit(before.iloc[:2000])
    assert _rmse(model, after) < 1.2 * _rmse(model, before.iloc[2000:])  # P(y | x) unchanged


def test_friedman_concept_drift_breaks_a_static_model_and_a_refit_recovers() -> None:
    frame = FriedmanStream(seed=5, plan=DriftPlan(concept_drift_at=4000)).take_frame(8000, "label")
    static = _fit(frame.iloc[:3000])
    before = _rmse(static, frame.iloc[3000:4000])
    assert _rmse(static, frame.iloc[7000:]) > 3 * before
    assert _rmse(_fit(frame.iloc[4000:7000]), frame.iloc[7000:]) < 1.2 * before


def test_stream_for_picks_the_task_s_stream() -> None:
    assert isinstance(stream_for("classification", seed=1), LoanStream)
    regression = stream_for("regression", seed=1, plan=DriftPlan(concept_drift_at=5))
    assert isinstance(regression, FriedmanStream)
    assert regression.plan.concept_drift_at == 5


def test_write_batches_names_files_after_the_stream(tmp_path: Path) -> None:
    names = write_batches(FriedmanStream(seed=1), 300, 200, Folder(tmp_path), "y", "csv")
    assert [n.split("-")[0] for n in names] == ["friedman", "friedman"]
    assert pd.read_csv(tmp_path / names[0]).y.dtype == "float64"
