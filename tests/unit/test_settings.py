from pathlib import Path

import pytest

from driftloop.settings import load_settings


def test_home_moves_every_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTLOOP_HOME", str(tmp_path / "h"))
    settings = load_settings()
    home = tmp_path / "h"
    assert settings.landing.local_path == home / "landing"
    assert settings.quarantine.local_path == home / "quarantine"
    assert settings.dagster_home == home / "dagster"
    assert settings.mlflow_tracking_uri == f"sqlite:///{home}/mlflow/mlflow.db"
    assert settings.mlflow_artifact_root == (home / "mlflow" / "artifacts").as_uri()
    assert settings.optuna_storage_url == f"sqlite:///{home}/optuna.db"


def test_scale_out_uris_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTLOOP_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("DRIFTLOOP_OPTUNA_STORAGE", "postgresql://u@db/optuna")
    settings = load_settings()
    assert settings.mlflow_tracking_uri == "http://mlflow:5000"
    assert settings.optuna_storage_url == "postgresql://u@db/optuna"


def test_bad_value_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTLOOP_PROMOTION_POLICY", "sometimes")
    with pytest.raises(ValueError, match="promotion_policy"):
        load_settings()
