from pathlib import Path

import pytest

from driftloop.settings import WeakAdminKey, load_settings


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


@pytest.mark.parametrize("value", ["", "  ", "\t\n"])
def test_an_empty_admin_key_means_admin_off(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """What compose's `${DRIFTLOOP_ADMIN_API_KEY:-}` passes when the variable is unset."""
    monkeypatch.setenv("DRIFTLOOP_ADMIN_API_KEY", value)
    assert load_settings().admin_api_key is None


def test_a_short_admin_key_refuses_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTLOOP_ADMIN_API_KEY", "change-me")
    with pytest.raises(WeakAdminKey) as error:
        load_settings()
    assert str(error.value).startswith("DRIFTLOOP_ADMIN_API_KEY has 9 characters, fewer than")
    assert "change-me" not in str(error.value)  # the key itself is never printed
    monkeypatch.setenv("DRIFTLOOP_ADMIN_API_KEY", "k" * 32)
    assert load_settings().admin_api_key.get_secret_value() == "k" * 32


def test_the_serving_body_limit_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().serve_max_body_bytes == 2**20
    monkeypatch.setenv("DRIFTLOOP_SERVE_MAX_BODY_BYTES", "4096")
    assert load_settings().serve_max_body_bytes == 4096
