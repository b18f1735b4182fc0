"""Errors a user can cause end as one sentence and exit code 2, never a traceback."""

import pytest

from driftloop.cli import main
from driftloop.settings import Settings


def error_of(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1]


def test_bad_configuration(home: Settings, monkeypatch, capsys) -> None:
    monkeypatch.setenv("DRIFTLOOP_CV_FOLDS", "1")
    assert error_of(capsys, ["status"]).startswith(
        "driftloop: bad configuration: cv_folds Input should be greater than or equal to 2"
    )


def test_unreachable_tracking_store(home: Settings, monkeypatch, capsys) -> None:
    monkeypatch.setenv("DRIFTLOOP_TRACKING_URI", "http://127.0.0.1:9")
    assert error_of(capsys, ["status"]) == (
        "driftloop: cannot reach the MLflow store at http://127.0.0.1:9"
    )


def test_nothing_to_roll_back_or_promote(home: Settings, capsys) -> None:
    assert error_of(capsys, ["rollback"]) == (
        "driftloop: nothing to roll back to: no @previous version is set"
    )
    assert "has no version 7" in error_of(capsys, ["promote", "7"])


def test_simulate_rejects_nonsense(home: Settings, capsys) -> None:
    assert error_of(capsys, ["simulate", "--rows", "0"]) == (
        "driftloop: --rows and --batch-rows must be positive"
    )
