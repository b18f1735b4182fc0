"""The demo orchestrator stays outside the stacks it drives, and its numbers follow the task.

The whole demo takes about ten minutes on two cores (servers, a first training, a drill,
a retrain and a canary), too long for this suite: `driftloop demo --quick [--task
regression]` is run by hand and its summaries are in the issue notes. These tests cover
what the demo computes from the traffic it sees, for both tasks, without servers.
"""

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from driftloop.demo import (
    QUICK,
    LoopState,
    Quality,
    Served,
    _Estimator,
    _plot,
    _summarise,
    child_env,
)
from driftloop.estimation import confidence_calibration
from driftloop.schema import infer_schema
from driftloop.settings import Settings
from driftloop.simulate import DriftPlan, LoanStream, stream_for
from driftloop.training import DEFAULT_TRIALS, make_model


def test_the_demo_module_imports_neither_dagster_nor_ray() -> None:
    """The demo watches the system from outside; importing it must not start either stack."""
    probe = "import sys, driftloop.demo; print(sorted({'dagster', 'ray'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


PORTS = {"serve": 1, "dagster": 2, "mlflow": 3}


def test_children_judge_the_regression_demo_in_rmse_and_the_classic_one_in_accuracy(
    tmp_path: Path,
) -> None:
    regression = child_env(tmp_path, replace(QUICK, task="regression"), PORTS, "k" * 32)
    assert (regression["DRIFTLOOP_TASK"], regression["DRIFTLOOP_METRIC"]) == ("regression", "rmse")
    classification = child_env(tmp_path, QUICK, PORTS, "k" * 32)
    assert "DRIFTLOOP_TASK" not in classification  # inferred from the 0/1 loan labels
    assert classification["DRIFTLOOP_METRIC"] == "accuracy"


def test_rmse_and_accuracy_of_served_requests() -> None:
    rmse, accuracy = Quality.for_task("regression"), Quality.for_task("classification")
    assert rmse.score([1.0, 2.0, 3.0], [1.0, 2.0, 7.0]) == pytest.approx((16 / 3) ** 0.5)
    assert rmse.of([Served(0, "1", {}, 2.5, rmse.parse(2.0))]) == pytest.approx(0.5)
    assert accuracy.of([Served(0, "1", {}, 1, accuracy.parse(1))] * 3) == 1.0
    assert accuracy.score([0, 1], ["0", "0"]) == 0.5
    assert rmse.score([], []) is None
    assert (rmse.worst([1.0, 4.0]), accuracy.worst([0.6, 0.9])) == (4.0, 0.6)


def _regression_traffic() -> LoopState:
    """60 s of served Friedman rows at 20 per second: a good model for 20 s, a model off by
    3 from t = 20 (the drift) and a good one again from t = 40 (a new champion)."""
    state = LoopState(started=0.0, quality=Quality.for_task("regression"))
    stream = stream_for("regression", seed=3, plan=DriftPlan())
    for i in range(1200):
        features, y = next(stream)
        t = i / 20
        version, error = ("2", 0.5) if t >= 40 else ("1", 3.0 if t >= 20 else 0.5)
        state.served.append(Served(t, version, features, y, y + error))
    state.champion = "2"
    return state


def test_a_regression_summary_reports_rmse_with_the_worst_as_max_during(tmp_path: Path) -> None:
    state = _regression_traffic()
    summary = _summarise(
        QUICK, Settings(home=tmp_path), state, None, 20.0, 400, 20.0, serving_at=40.0
    )
    assert "accuracy" not in summary
    assert summary["rmse"] == {
        "before": None,  # no first champion named: nothing to compare it with
        "max_during": 3.0,
        "after": 0.5,
        "static_after": None,
        "oracle_after": None,
    }
    _plot(state, tmp_path / "rmse.png")
    assert (tmp_path / "rmse.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _classification_traffic() -> tuple[LoopState, _Estimator]:
    """60 s of loans at 25 per second, answered by the loop's default pipeline (calibrated
    as registration calibrates it): calm until 20 s, covariate shift from 20 s, concept
    drift from 40 s; a drift retrain asked for in the calm phase and a quality one after."""
    stream = LoanStream(seed=5)
    train, holdout = stream.take_frame(3000, "label"), stream.take_frame(1000, "label")
    model = make_model(
        DEFAULT_TRIALS["classification"][0], infer_schema(train, "label"), seed=0
    ).fit(train.drop(columns="label"), train["label"])
    calibration = np.asarray(
        confidence_calibration(model, holdout.drop(columns="label"), holdout["label"])
    )
    rows = []
    for i in range(1500):
        if i == 500:
            stream.plan = DriftPlan(covariate_shift_at=stream.position)
        if i == 1000:
            stream.plan = DriftPlan(concept_drift_at=stream.position, drift_function=1)
        rows.append(next(stream))
    probabilities = model.predict_proba(pd.DataFrame([features for features, _ in rows]))
    state = LoopState(started=0.0, quality=Quality.for_task("classification"))
    for i, ((features, y), p) in enumerate(zip(rows, probabilities, strict=True)):
        prediction = state.quality.parse(model.classes_[p.argmax()])
        state.served.append(Served(i / 25, "1", features, y, prediction, float(p.max())))
    state.champion = "1"
    state.retrains = [
        {"run_id": "a", "trigger": "drift", "reason": "calm noise", "t": 5.0},
        {"run_id": "b", "trigger": "quality", "reason": "adwin at 120", "t": 45.0},
    ]
    return state, _Estimator({"1": calibration}.get)


def test_a_classification_summary_sets_the_estimate_beside_the_realized_accuracy(
    tmp_path: Path,
) -> None:
    state, estimator = _classification_traffic()
    summary = _summarise(
        QUICK, Settings(home=tmp_path), state, None, 20.0, 500, 40.0, None, estimator
    )
    phases = summary["estimated_accuracy"]
    assert (
        abs(phases["covariate_shift"]["estimated"] - phases["covariate_shift"]["realized"]) < 0.05
    )
    concept = phases["concept_drift"]
    assert concept["estimated"] - concept["realized"] > 0.15  # the concept moved unseen
    assert summary["false_alarms"] == 1
    assert summary["detected_by"]["trigger"] == "quality"
    assert summary["detected_by"]["reason"] == "adwin at 120"
    _plot(state, tmp_path / "accuracy.png", estimator)
    assert (tmp_path / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
