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

import pytest

from driftloop.demo import QUICK, LoopState, Quality, Served, _plot, _summarise, child_env
from driftloop.settings import Settings
from driftloop.simulate import DriftPlan, stream_for


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
