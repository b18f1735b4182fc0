"""The demo orchestrator stays outside the stacks it drives, and its numbers follow the task.

The whole demo takes about ten minutes on two cores (servers, a first training, a drill,
a retrain and a canary), too long for this suite: `driftloop demo --quick [--task
regression]` is run by hand and its summaries are in the issue notes. These tests cover
what the demo computes from the traffic it sees, for both tasks, without servers.
"""

import functools
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cli.demo.observer import (
    alarm_from_log,
    alarm_from_tags,
    canary_event,
    canary_record,
    metadata_values,
)
from cli.demo.plan import QUICK, STATIONARY
from cli.demo.report import (
    Estimator,
    canary_outcomes,
    plot_metric,
    summarise,
    summarise_stationary,
)
from cli.demo.run import child_env
from cli.demo.state import LoopState, Quality, Served
from driftloop.estimation import confidence_calibration
from driftloop.schema import infer_schema
from driftloop.settings import Settings
from driftloop.simulate import DriftPlan, LoanStream, stream_for
from driftloop.supervisor import preferred_port
from driftloop.training import DEFAULT_TRIALS, make_model


def test_the_demo_module_imports_neither_dagster_nor_ray() -> None:
    """The demo watches the system from outside; importing it must not start either stack
    (`run` imports every other module of the package)."""
    probe = "import sys, cli.demo.run; print(sorted({'dagster', 'ray'} & set(sys.modules)))"
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


def test_the_demo_takes_the_usual_port_when_free_and_another_while_a_server_holds_it() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        held = server.getsockname()[1]
        other = preferred_port(held)
        assert other != held
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", other))  # nothing listens there
    assert preferred_port(held) == held


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
    summary = summarise(
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
    plot_metric(state, tmp_path / "rmse.png")
    assert (tmp_path / "rmse.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@functools.cache
def _loan_answers() -> tuple[list, np.ndarray, np.ndarray, np.ndarray]:
    """The loans, the default pipeline's probabilities and classes, and its calibration:
    trained once for the tests that build traffic from them."""
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
    return rows, probabilities, model.classes_, calibration


def _classification_traffic() -> tuple[LoopState, Estimator]:
    """60 s of loans at 25 per second, answered by the loop's default pipeline (calibrated
    as registration calibrates it): calm until 20 s, covariate shift from 20 s, concept
    drift from 40 s; a drift retrain asked for in the calm phase and a quality one after."""
    rows, probabilities, classes, calibration = _loan_answers()
    state = LoopState(started=0.0, quality=Quality.for_task("classification"))
    for i, ((features, y), p) in enumerate(zip(rows, probabilities, strict=True)):
        prediction = state.quality.parse(classes[p.argmax()])
        state.served.append(Served(i / 25, "1", features, y, prediction, float(p.max())))
    state.champion = "1"
    state.retrains = [
        {"run_id": "a", "trigger": "drift", "reason": "calm noise", "t": 5.0},
        {"run_id": "b", "trigger": "quality", "reason": "adwin at 120", "t": 45.0},
    ]
    return state, Estimator({"1": calibration}.get)


def test_a_classification_summary_sets_the_estimate_beside_the_realized_accuracy(
    tmp_path: Path,
) -> None:
    state, estimator = _classification_traffic()
    summary = summarise(
        QUICK, Settings(home=tmp_path), state, None, 20.0, 500, 40.0, None, estimator
    )
    phases = summary["estimated_accuracy"]
    assert (
        abs(phases["covariate_shift"]["estimated"] - phases["covariate_shift"]["realized"]) < 0.05
    )
    concept = phases["concept_drift"]
    assert concept["estimated"] - concept["realized"] > 0.15  # the concept moved unseen
    assert summary["false_alarms"]["total"] == 1  # the calm drift retrain
    assert summary["detected_by"]["trigger"] == "quality"  # no detector fired: the monitor
    assert summary["detected_by"]["reason"] == "adwin at 120"
    plot_metric(state, tmp_path / "accuracy.png", estimator)
    assert (tmp_path / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# What error_stream_sensor logged on a demo run's tick (2026-12-01 20:10), and the same
# alarm as its pending entry tags it.
LOGGED = (
    "error-stream alarm: Alarm(detector='cusum', samples=3100, change_sample=3072, "
    "change_at=1796155800.165, before=0.0966796875, after=np.float64(0.4642857142857143))"
)
TAGS = {
    "driftloop/detector": "cusum",
    "driftloop/detected_after_samples": "3100",
    "driftloop/change_at_sample": "3072",
    "driftloop/change_at": "1796155800.165",
}


def test_an_alarm_is_read_from_the_sensor_tick_log_and_from_the_retrain_tags() -> None:
    logged = alarm_from_log(LOGGED)
    assert logged == {
        "detector": "cusum",
        "samples": 3100,
        "change_sample": 3072,
        "change_at": 1796155800.165,
        "before": 0.0967,
        "after": 0.4643,
    }
    tagged = alarm_from_tags(TAGS)
    assert tagged is not None and {k: logged[k] for k in tagged} == tagged
    assert alarm_from_log("1200 new labelled outcomes, no alarm") is None
    assert alarm_from_tags({"driftloop/trigger": "drift"}) is None


def _alarm(t: float, change_t: float, delay: int = 28) -> dict:
    return {
        "detector": "cusum",
        "samples": 3000 + delay,
        "change_sample": 3000,
        "change_at": 0.0,
        "t": t,
        "change_t": change_t,
        "samples_after_change": delay,
    }


def test_the_first_detector_alarm_after_onset_is_what_detected_the_drift(tmp_path: Path) -> None:
    state, _ = _classification_traffic()
    state.alarms = [_alarm(10.0, 8.0, 400), _alarm(46.0, 40.2)]
    summary = summarise(QUICK, Settings(home=tmp_path), state, None, 20.0, 500, 40.0, None)
    by = summary["detected_by"]
    assert (by["source"], by["detector"], by["labelled_samples"]) == (
        "error_stream_sensor",
        "cusum",
        28,
    )
    assert (by["t"], by["s_after_onset"], by["change_estimated_at_t"]) == (46.0, 26.0, 40.2)
    # Rows served from the change at 40 s to 43 s (both included, 25 a second), each
    # labelled 3 s after it was served: posted by the alarm at 46 s.
    assert by["labels_sent_since_change"] == 76
    assert summary["detected_at_s"] == 20.0 + 25.0  # the quality retrain at 45 s came first
    # Before onset: the calm drift retrain and the calm alarm, each once.
    assert summary["false_alarms"] == {
        "detector_alarms": 1,
        "estimated_drop_alerts": 0,
        "monitor_retrains": 1,
        "total": 2,
    }


def _decision(t: float, version: str, verdict: str, n: int, low: float, high: float) -> dict:
    """A canary_decision materialisation's metadata as Dagster's GraphQL returns it."""
    entries = [
        {"label": "challenger_version", "text": version},
        {"label": "verdict", "text": verdict},
        {"label": "reason", "text": f"{verdict} on the confidence sequence"},
        {"label": "weight", "floatValue": 0.25},
        {"label": "challenger_n", "intValue": n},
        {"label": "champion_n", "intValue": 3 * n},
        {"label": "difference", "floatValue": (low + high) / 2},
        {"label": "ci_low", "floatValue": low},
        {"label": "ci_high", "floatValue": high},
        {"label": "judged", "boolValue": True},
    ]
    record = canary_record(metadata_values(entries))
    assert record is not None
    return {**record, "t": t}


def test_canary_decisions_give_each_canary_its_samples_to_decision(tmp_path: Path) -> None:
    state = _regression_traffic()  # v1 answers until 40 s, v2 from then on
    start = canary_record(metadata_values([{"label": "verdict", "text": "idle"}]))
    assert start is None  # no canary ran: no record
    state.canary = [
        _decision(10.0, "2", "wait", 20, -0.3, 0.4),
        _decision(15.0, "2", "rollback", 60, -0.9, -0.5),
        _decision(30.0, "3", "wait", 30, -0.1, 0.6),
        _decision(35.0, "3", "promote", 45, 0.2, 0.5),
    ]
    outcomes = canary_outcomes(state)
    assert outcomes["2"] == {
        "verdict": "rollback",
        "challenger_n": 60,
        "champion_n": 180,
        "checks": 2,
        "requests": 0,  # v2 answered nothing before 15 s in this traffic
        "t": 15.0,
    }
    assert (outcomes["3"]["verdict"], outcomes["3"]["challenger_n"]) == ("promote", 45)
    line = canary_event(state.canary[1])
    assert "v2: rollback (weight 25%), n 60 vs 180, gain -0.700 in [-0.900, -0.500]" in line
    plot_metric(state, tmp_path / "canary.png")
    assert (tmp_path / "canary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_stationary_run_counts_every_retrain_and_alarm_per_hour() -> None:
    assert (STATIONARY.drift, STATIONARY.drill, STATIONARY.calm_s) == (False, False, 1200.0)
    state, _ = _classification_traffic()  # 60 s of traffic, its drifts unknown to the loop
    state.alarms = [_alarm(50.0, 41.0)]
    state.estimated_alerts = [30.0]
    state.retrains.append(
        {"run_id": "c", "trigger": "quality", "reason": "error stream", "t": 52.0, "detector": "x"}
    )
    summary = summarise_stationary(state, "1")
    assert summary["retrains"] == {"drift": 1, "quality": 2}
    # The detector's retrain is its alarm, counted once; the two monitor retrains are not.
    assert summary["false_alarms"]["total"] == 1 + 1 + 2
    assert summary["alarms_per_hour"] == pytest.approx(4 / (59.96 / 3600), rel=1e-3)
    assert summary["detector_alarms"] == 1 and summary["requests"] == 1500
