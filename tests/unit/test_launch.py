"""The ports a local start hands HAProxy: the operator's when set, else fresh ones each time."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml

from driftloop.settings import Settings
from serving import launch
from serving.app import ServeArgs

METRICS = "RAY_SERVE_HAPROXY_METRICS_PORT"


def test_free_port_is_bindable_and_below_the_ephemeral_range() -> None:
    port = launch.free_port()
    low = int(Path(launch.EPHEMERAL_RANGE_FILE).read_text().split()[0])
    assert launch.FIRST_CHOSEN_PORT <= port < low
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))


def test_a_later_start_never_reuses_a_port_taken_since(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The failure seen in CI: the port written at one start was held by another process at
    the next, and HAProxy could not bind it."""
    monkeypatch.delenv(METRICS, raising=False)
    settings = Settings(home=tmp_path)
    first = launch.serve_env(settings, haproxy=True)[METRICS]
    monkeypatch.setenv(METRICS, first)  # what `start` leaves in the environment
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", int(first)))
        squatter.listen()
        second = launch.serve_env(settings, haproxy=True)[METRICS]
    assert second != first


def test_the_operators_port_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(METRICS, "23456")
    assert launch.serve_env(Settings(home=tmp_path), haproxy=True)[METRICS] == "23456"


def test_local_and_cluster_deploy_the_same_file_but_host_and_replicas(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One application: serve_config.yaml's import path, arguments and deployment, with the
    environment's routing and port. Locally the replica count is fixed and the proxy binds
    DRIFTLOOP_SERVE_HOST; on a cluster the file's autoscaling and all-interfaces host stay."""
    monkeypatch.setenv("DRIFTLOOP_CANARY_WEIGHT", "0.25")
    settings = Settings(home=tmp_path, serve_port=23457)
    args = ServeArgs(home=str(tmp_path), poll_interval_s=0.2)
    local = launch.deploy_config(settings, args, local=True)
    cluster = launch.deploy_config(settings, args, local=False)
    file = yaml.safe_load(launch.CONFIG_FILE.read_text())["applications"][0]
    for config in (local, cluster):
        (app,) = config.applications
        assert app.import_path == file["import_path"]
        assert app.args == {**file["args"], "home": str(tmp_path), "poll_interval_s": 0.2}
        (deployment,) = app.deployments
        assert deployment.user_config == {
            **file["deployments"][0]["user_config"],
            "canary_weight": 0.25,
        }
        assert config.http_options.port == 23457
    assert (local.http_options.host, cluster.http_options.host) == ("127.0.0.1", "0.0.0.0")
    assert local.applications[0].deployments[0].num_replicas == settings.serve_replicas
    assert "autoscaling_config" not in local.applications[0].deployments[0].model_fields_set
    scaled = cluster.applications[0].deployments[0]
    assert scaled.num_replicas == "auto"
    assert scaled.autoscaling_config == file["deployments"][0]["autoscaling_config"]


def test_a_given_replica_count_replaces_the_autoscaling_on_a_cluster(tmp_path: Path) -> None:
    config = launch.deploy_config(Settings(home=tmp_path), ServeArgs(num_replicas=2), local=False)
    (deployment,) = config.applications[0].deployments
    assert deployment.num_replicas == 2
    assert "autoscaling_config" not in deployment.model_fields_set
