"""The ports a local start hands HAProxy: the operator's when set, else fresh ones each time."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from driftloop.settings import Settings
from serving import launch

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
