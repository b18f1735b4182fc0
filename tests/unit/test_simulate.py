from pathlib import Path

import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier

from driftloop.simulate import DriftPlan, LoanStream, write_batches
from driftloop.storage import Folder

FEATURES = ["salary", "commission", "age", "elevel", "car", "zipcode", "hvalue", "hyears", "loan"]


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


def test_write_batches_splits_rows_into_files(tmp_path: Path) -> None:
    names = write_batches(LoanStream(seed=1), 2500, 1000, Folder(tmp_path), "approved", "csv")
    assert names == sorted(names)
    assert [len(pd.read_csv(tmp_path / n)) for n in names] == [1000, 1000, 500]
    assert "approved" in pd.read_csv(tmp_path / names[0]).columns
    assert not list(tmp_path.glob(".*"))
