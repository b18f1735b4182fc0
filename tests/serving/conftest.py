"""A home with two registered versions and the real Serve application on 127.0.0.1.

The serving tests move aliases and tamper with artifacts, so they get a home of their own
rather than the session's `trained_home`. Ray is started once for the package with two
CPUs and always shut down, HAProxy included.
"""

import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from driftloop.registry import CHALLENGER, CHAMPION, PREVIOUS, Registry
from driftloop.settings import Settings, load_settings
from serving import launch
from serving.app import ServeArgs
from tests.conftest import FAST_ENV, land, train

ADMIN_KEY = "test-admin-key"
SERVE_ENV = {
    **FAST_ENV,
    "DRIFTLOOP_ADMIN_API_KEY": ADMIN_KEY,
    # Short windows so tests can read published prediction-log files within seconds.
    "DRIFTLOOP_PREDICTION_LOG_WINDOW_S": "2",
}


@dataclass(frozen=True)
class Served:
    settings: Settings
    url: str
    registry: Registry
    champion: str
    challenger: str

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="package")
def serving_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Environment for the whole package: a fresh home, fast training, an admin key."""
    saved = dict(os.environ)
    os.environ.pop("DAGSTER_HOME", None)
    os.environ["DRIFTLOOP_HOME"] = str(tmp_path_factory.mktemp("serving") / "home")
    os.environ["DRIFTLOOP_SERVE_PORT"] = str(_free_port())
    os.environ.update(SERVE_ENV)
    try:
        yield load_settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="package")
def two_versions(serving_env: Settings) -> tuple[str, str]:
    """Train twice on different simulated data: @champion v1 and @challenger v2."""
    settings = serving_env
    land(settings, rows=3000, batch_rows=1500, seed=7)
    assert train(settings).success
    land(settings, rows=1500, batch_rows=1500, seed=11)
    assert train(settings).success
    registry = Registry(settings.mlflow_tracking_uri, settings.model_name)
    registry.set_alias(CHAMPION, "1")
    registry.set_alias(CHALLENGER, "2")
    registry.delete_alias(PREVIOUS)
    return "1", "2"


@pytest.fixture(scope="package")
def served(serving_env: Settings, two_versions: tuple[str, str]) -> Iterator[Served]:
    settings = serving_env
    args = ServeArgs(home=str(settings.home), poll_interval_s=0.2)
    try:
        url = launch.start(settings, args, num_cpus=2)
        yield Served(
            settings=settings,
            url=url,
            registry=Registry(settings.mlflow_tracking_uri, settings.model_name),
            champion=two_versions[0],
            challenger=two_versions[1],
        )
    finally:
        launch.stop(settings)
        assert not launch.haproxy_pids(settings), "an HAProxy process outlived Serve"


def artifact_file(settings: Settings, registry: Registry, version: str) -> Path:
    """The model file of `version` inside the MLflow artifact store (for tampering)."""
    source = registry.client.get_model_version(registry.name, version).source
    model_id = source.removeprefix("models:/")
    model = registry.client.get_logged_model(model_id)
    return Path(model.artifact_location.removeprefix("file://")) / "model.skops"
