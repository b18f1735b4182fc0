"""The streaming error detectors on real streams: how fast they flag a change, that a
stationary stream raises nothing, that a saved and reloaded state decides the same; and
the incremental step that feeds them from the serving log."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

from driftloop.logwindows import segment_file
from driftloop.monitoring import error_stream
from driftloop.simulate import DriftPlan, FriedmanStream, LoanStream
from driftloop.storage import Folder
from driftloop.streaming import (
    DETECTORS,
    DetectorConfig,
    ErrorDetectors,
    StreamState,
    advance,
    has_new_feedback,
    mean_shift_split,
)

TRAIN, BEFORE, AFTER = 2000, 2000, 1500


def loan_errors(seed: int, drift: bool) -> np.ndarray:
    """A loan classifier's 0/1 errors on BEFORE + AFTER labelled samples; with `drift`,
    Agrawal's function switches from 4 to 1 after BEFORE of them."""
    train = LoanStream(seed=seed).take_frame(TRAIN, "y")
    model = DecisionTreeClassifier(max_depth=8, random_state=seed)
    model.fit(train.drop(columns="y"), train.y)
    plan = DriftPlan(concept_drift_at=TRAIN + BEFORE if drift else None)
    stream = LoanStream(seed=seed, plan=plan)
    stream.take_frame(TRAIN, "y")
    watched = stream.take_frame(BEFORE + AFTER, "y")
    rows = pd.DataFrame(
        {
            "prediction": model.predict(watched.drop(columns="y")).astype(str),
            "label": watched.y.astype(str),
        }
    )
    return error_stream(rows, ["0", "1"], 0.0)


def friedman_errors(seed: int, drift: bool) -> np.ndarray:
    """A regressor's errors as the monitor scales them: |y - y^| / (3 x holdout MAE),
    capped at 1; with `drift`, river's 'gra' drift after BEFORE samples."""
    plan = DriftPlan(concept_drift_at=TRAIN + 500 + BEFORE if drift else None)
    stream = FriedmanStream(seed=seed, plan=plan)
    train, holdout = stream.take_frame(TRAIN, "y"), stream.take_frame(500, "y")
    model = DecisionTreeRegressor(max_depth=8, random_state=seed)
    model.fit(train.drop(columns="y"), train.y)
    mae = float(np.abs(model.predict(holdout.drop(columns="y")) - holdout.y).mean())
    watched = stream.take_frame(BEFORE + AFTER, "y")
    rows = pd.DataFrame(
        {
            "prediction": [repr(float(v)) for v in model.predict(watched.drop(columns="y"))],
            "label": [repr(float(v)) for v in watched.y],
        }
    )
    return error_stream(rows, [], mae)


def alarms(errors: np.ndarray, config: DetectorConfig | None = None) -> list:
    detectors = ErrorDetectors(config)
    return detectors.update_many(np.arange(len(errors), dtype=float), errors)


# Measured (seeds 3 and 4; scripts/bench_detectors.py has 20): the first alarm (CUSUM's)
# came 48 and 84 labelled samples after the loan stream's change, 22 and 48 after
# Friedman's, its change estimate 0-44 samples late. The bounds leave a margin of 2-3x.
@pytest.mark.parametrize(
    ("make", "within"), [(loan_errors, 200), (friedman_errors, 150)], ids=["loans", "friedman"]
)
@pytest.mark.parametrize("seed", [3, 4])
def test_a_change_is_flagged_within_a_few_hundred_labelled_samples(make, within, seed) -> None:
    found = alarms(make(seed, drift=True))
    assert found, "no detector fired"
    first = found[0]
    assert first.detector in DETECTORS
    assert BEFORE < first.samples <= BEFORE + within, first
    assert abs(first.change_sample - BEFORE) <= 100, first
    assert first.change_at == float(first.change_sample)  # the sample's (prediction) time
    assert first.after > first.before


@pytest.mark.parametrize("make", [loan_errors, friedman_errors], ids=["loans", "friedman"])
def test_no_alarm_on_a_stationary_stream_of_the_same_length(make) -> None:
    assert alarms(make(3, drift=False)) == []


def test_each_detector_alone_finds_the_change() -> None:
    errors = loan_errors(3, drift=True)
    for name in DETECTORS:
        (first, *_) = alarms(errors, DetectorConfig(detectors=(name,)))
        assert first.detector == name and BEFORE < first.samples <= BEFORE + 400, first


def test_a_reloaded_state_gives_the_verdicts_of_an_uninterrupted_run() -> None:
    """Saved as JSON and reloaded at many points (across alarms and rebases of the tail),
    the detectors raise exactly the alarms one uninterrupted set raises."""
    errors = np.concatenate([loan_errors(4, drift=True), friedman_errors(4, drift=True)])
    at = 1_700_000_000 + np.arange(len(errors)) * 0.25
    config = DetectorConfig(max_tail=900, keep_tail=400)  # several rebases in this stream
    whole = ErrorDetectors(config).update_many(at, errors)
    assert len(whole) >= 2  # the loan change and the Friedman one at least

    resumed, detectors, sizes = [], ErrorDetectors(config), []
    for start in range(0, len(errors), 333):
        part = slice(start, start + 333)
        resumed += detectors.update_many(at[part], errors[part])
        state = json.dumps(detectors.to_json())
        sizes.append(len(state))
        detectors = ErrorDetectors.from_json(json.loads(state), config)
    assert resumed == whole
    assert max(sizes) < 4_000  # the bounded tail: ~900 samples at most


def test_the_state_of_a_long_run_stays_small() -> None:
    rng = np.random.default_rng(0)
    detectors = ErrorDetectors()
    errors = rng.random(20_000) * 0.6
    assert detectors.update_many(np.arange(20_000.0), errors) == []
    assert len(detectors.to_json()["errors"]) < 8_000 and detectors.seen == 20_000


def test_the_mean_shift_split_finds_the_start_of_the_new_regime() -> None:
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.random(800) < 0.1, rng.random(200) < 0.4]).astype(float)
    assert abs(mean_shift_split(values) - 800) <= 20
    assert mean_shift_split(np.array([0.5])) == 0


def test_other_versions_of_the_state_start_fresh() -> None:
    detectors = ErrorDetectors()
    detectors.update_many(np.arange(10.0), np.ones(10))
    state = {**detectors.to_json(), "version": 0}
    assert ErrorDetectors.from_json(state).seen == 0


def test_a_step_feeds_new_labels_once_and_waits_for_late_predictions(tmp_path) -> None:
    """Feedback published before its predictions waits (not lost), every label is fed
    once, and a torn feedback file is skipped and counted."""
    predictions, feedback = Folder(tmp_path / "p"), Folder(tmp_path / "p" / "feedback")
    now = 1_800_000_300.0
    window = int(now // 300) * 300
    at = pd.Timestamp(now - 60, unit="s", tz="UTC")

    def served(first: int, count: int) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "request_id": [f"r{i}" for i in range(first, first + count)],
                "index": 0,
                "at": [at + pd.Timedelta(seconds=i) for i in range(first, first + count)],
                "model_version": "3",
                "prediction": "1",
            }
        )

    def labelled(first: int, count: int) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "request_id": [f"r{i}" for i in range(first, first + count)],
                "id": None,
                "at": pd.Timestamp(now, unit="s", tz="UTC"),
                "label": ["1", "0"] * (count // 2),
            }
        )

    state = StreamState()
    predictions.write_frame(segment_file(window, "w", 0), served(0, 10))
    feedback.write_frame(segment_file(window, "w", 0), labelled(0, 20))  # 10 not served yet
    feedback.write_bytes(segment_file(window, "w", 1), b"PAR1 torn")

    def step():
        return advance(state, feedback, predictions, "3", ["0", "1"], None, now, 900, 300)

    first = step()
    assert (first.fed, first.waiting, len(first.skipped)) == (10, 10, 1)
    assert state.skipped_files == 1 and state.labelled == 10
    predictions.write_frame(segment_file(window, "w", 1), served(10, 10))
    state = StreamState.from_json(json.loads(json.dumps(state.to_json())))
    second = step()
    assert (second.fed, second.waiting, second.skipped) == (10, 0, ())
    assert state.labelled == 20 and step().fed == 0
    assert not has_new_feedback(state, feedback, now, 900)
    # another champion's errors start afresh
    assert advance(state, feedback, predictions, "4", ["0", "1"], None, now, 900, 300).fed == 0
    assert state.detectors.seen == 0 and state.champion == "4"
