"""`driftloop up` as a user runs it, and the supervisor under it: real processes throughout.

The loop comes up without a champion (serving waits), a model is promoted while the
servers run, serving starts on its own and answers a predict over HTTP, and after SIGTERM
no process it started is left, checked by PID and by every process's environment.
"""

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from driftloop.registry import CHAMPION, Registry
from driftloop.settings import Settings
from driftloop.simulate import LoanStream
from driftloop.supervisor import ChildFailed, Supervisor
from serving import launch
from tests.conftest import land, train

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BIN = Path(sys.executable).parent


class Output:
    """The lines a child prints, read on a thread so waiting never blocks on a pipe."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc, self.lines, self.seen = proc, queue.Queue[str](), []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, text: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                assert self.proc.poll() is None, "up exited:\n" + "\n".join(self.seen)
                continue
            self.seen.append(line)
            if text in line:
                return
        raise AssertionError(f"no {text!r} within {timeout_s}s:\n" + "\n".join(self.seen))

    def rest(self) -> str:
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return "\n".join(self.seen)


def _with_our_home(home: Path) -> list[psutil.Process]:
    """Every process on the machine whose environment names this driftloop home, except
    this test's own (the training run's trial workers)."""
    ours = {os.getpid(), *(p.pid for p in psutil.Process().children(recursive=True))}
    found = []
    for process in psutil.process_iter():
        if process.pid in ours:
            continue
        try:
            if process.environ().get("DRIFTLOOP_HOME") == str(home):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _gone(process: psutil.Process) -> bool:
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_up_waits_for_a_champion_serves_and_leaves_nothing_after_sigterm(
    home: Settings,
) -> None:
    land(home, rows=1500, batch_rows=1500)
    assert train(home).success
    # Trained before `up` (faster on two cores than beside it), then unpromoted: `up` must
    # start without a champion and begin serving when one is promoted, as the gate does.
    registry = Registry(home.mlflow_tracking_uri, home.model_name)
    registry.delete_alias(CHAMPION)
    ports = {name: launch.free_port() for name in ("DAGSTER", "MLFLOW", "SERVE")}
    env = {
        **os.environ,
        **{f"DRIFTLOOP_{name}_PORT": str(port) for name, port in ports.items()},
        "PYTHONUNBUFFERED": "1",
    }
    up = subprocess.Popen(
        [str(BIN / "driftloop"), "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    out = Output(up)
    try:
        out.wait_for("waits for a @champion", 180)
        out.wait_for("Ctrl-C stops everything.", 10)
        dagster = f"http://127.0.0.1:{ports['DAGSTER']}"
        assert httpx.get(f"{dagster}/server_info").status_code == 200
        assert httpx.get(f"http://127.0.0.1:{ports['MLFLOW']}/health").status_code == 200

        registry.set_alias(CHAMPION, "1")
        serving = f"http://127.0.0.1:{ports['SERVE']}"
        out.wait_for(f"serving: {serving}", 240)
        features, _ = next(LoanStream(seed=3))
        answer = httpx.post(
            f"{serving}/v1/models/{home.model_name}:predict",
            json={"instances": [features]},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_version"] == "1"

        started = psutil.Process(up.pid).children(recursive=True)
        names = {p.name() for p in started}
        assert {"mlflow", "dagster", "driftloop", "raylet", "haproxy"} <= names, names
    finally:
        up.send_signal(signal.SIGTERM)
        code = up.wait(timeout=120)
    log = out.rest()
    assert code == 0, log
    assert "stopped: no server process left" in log
    left = [p for p in started if not _gone(p)]
    assert not left, f"left behind: {left}"
    assert not [p for p in _with_our_home(home.home) if not _gone(p)]
    assert not launch.haproxy_pids(home)


def test_a_failed_child_is_reported_with_its_own_last_lines(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path, dict(os.environ))
    crash = "print('starting'); print('OSError: [Errno 98] address already in use'); exit(3)"
    supervisor.start("server", [sys.executable, "-c", crash], tmp_path, "http://127.0.0.1:9/")
    with pytest.raises(ChildFailed) as failed:
        supervisor.wait_healthy("server", timeout_s=60)
    report = failed.value.report()
    assert report.startswith(f"server exited with code 3; the last lines of {tmp_path}")
    assert "  | OSError: [Errno 98] address already in use" in report
    assert supervisor.stop() == set()


def test_stop_ends_descendants_that_left_the_group_or_ignore_sigterm(tmp_path: Path) -> None:
    """Ray's processes leave the child's process group; one ignoring SIGTERM is killed."""
    stubborn = (
        "import os, signal, time; os.setpgrp(); signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        "print(os.getpid(), flush=True); time.sleep(300)"
    )
    spawner = (
        f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {stubborn!r}]);"
        "time.sleep(300)"
    )
    supervisor = Supervisor(tmp_path, dict(os.environ))
    supervisor.start("spawner", [sys.executable, "-c", spawner], tmp_path)
    log = tmp_path / "spawner.log"
    deadline = time.monotonic() + 30
    while not log.read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.1)
    grandchild = psutil.Process(int(log.read_text().splitlines()[-1]))
    assert grandchild.pid in supervisor.pids()
    assert supervisor.stop(grace_s=5) == set()
    assert _gone(grandchild), "a descendant outside the child's group outlived stop"


def test_children_of_a_background_job_get_sigint_back(tmp_path: Path) -> None:
    """A shell starts background jobs with SIGINT ignored; `dagster dev` would then also
    ignore SIGTERM (it maps SIGTERM to its SIGINT handler)."""
    probe = "import signal; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"
    saved = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        supervisor = Supervisor(tmp_path, dict(os.environ))
        supervisor.start("probe", [sys.executable, "-c", probe], tmp_path).wait(timeout=30)
    finally:
        signal.signal(signal.SIGINT, saved)
    assert (tmp_path / "probe.log").read_text().splitlines()[-1] == "True"
    supervisor.stop()
