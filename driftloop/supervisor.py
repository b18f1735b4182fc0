"""The loop's servers as child processes: started in order, health-checked, all stopped.

`driftloop up`, `driftloop ui` and the demo run the MLflow server, `dagster dev` (webserver
and daemon, so sensors and schedules run) and `driftloop serve` (Ray Serve) this way. Each
child runs in a session of its own with its own log file: a Ctrl-C in the terminal reaches
only the supervising process, which then stops the children in reverse start order, each
with SIGTERM (the leader first, so `dagster dev` and `driftloop serve` shut their own
processes down), then its whole process group, then SIGKILL for whatever is still left. It
remembers every descendant it saw by PID and start time, because some (Ray's) leave the
child's process group, and checks that none of them outlives `stop`.

It imports neither Dagster nor Ray: it watches them from outside, over HTTP and /proc.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from driftloop.settings import PROJECT_ROOT, Settings

TAIL_LINES = 20
HEALTH_TIMEOUT_S = 240.0  # Ray Serve on two busy cores takes ~30-60 s; Dagster ~15 s


class ChildFailed(RuntimeError):
    """A child exited or never became healthy; carries the end of its own log."""

    def __init__(self, name: str, why: str, log: Path, tail: str) -> None:
        self.name, self.why, self.log, self.tail = name, why, log, tail
        super().__init__(f"{name} {why}")

    def report(self) -> str:
        """What a person needs to see: which server, why, and its own last words."""
        lines = "\n".join(f"  | {line}" for line in self.tail.splitlines()) or "  | (empty)"
        return f"{self.name} {self.why}; the last lines of {self.log}:\n{lines}"


@dataclass(frozen=True)
class Service:
    """One server of the loop: how to start it, where it answers, how to tell it is up."""

    name: str
    command: list[str]
    cwd: Path
    port: int
    url: str
    health_url: str


@dataclass(frozen=True)
class _Pid:
    """A process by PID and start time, so a reused PID is never mistaken for it."""

    pid: int
    started: int

    def alive(self) -> bool:
        stat = _stat(self.pid)
        return stat is not None and stat[1] == self.started and stat[0] != "Z"


@dataclass
class _Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    log_start: int  # where this run's lines begin in the (appended) log
    health_url: str | None
    seen: set[_Pid] = field(default_factory=set)


class Supervisor:
    """The child processes of one command, each in its own session with its own log."""

    def __init__(
        self, logs: Path, env: Mapping[str, str], verify: ssl.SSLContext | bool = True
    ) -> None:
        self.logs, self.env = logs, dict(env)
        self.verify = verify  # for health URLs over https (serving with TLS)
        self.children: list[_Child] = []

    def start(
        self, name: str, command: list[str], cwd: Path, health_url: str | None = None
    ) -> subprocess.Popen[bytes]:
        self.logs.mkdir(parents=True, exist_ok=True)
        path = self.logs / f"{name}.log"
        with path.open("ab") as log:
            start = log.tell()
            proc = subprocess.Popen(
                command,
                cwd=cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_default_sigint if _sigint_ignored() else None,
            )
        child = _Child(name, proc, path, start, health_url)
        child.seen |= {_Pid(proc.pid, stat[1]) for stat in [_stat(proc.pid)] if stat}
        self.children.append(child)
        return proc

    def start_service(self, service: Service) -> None:
        self.start(service.name, service.command, service.cwd, service.health_url)

    def started(self, name: str) -> bool:
        return any(c.name == name for c in self.children)

    def check(self) -> None:
        """Raise `ChildFailed` for the first child that has exited; note new descendants."""
        self._note_descendants()
        for child in self.children:
            code = child.proc.poll()
            if code is not None:
                raise self._failed(child, f"exited with code {code}")

    def wait_healthy(self, name: str, timeout_s: float = HEALTH_TIMEOUT_S) -> None:
        """Block until `name` answers 200 on its health URL; any child exiting meanwhile,
        or the timeout, raises `ChildFailed` with that child's log."""
        child = next(c for c in self.children if c.name == name)
        assert child.health_url is not None, f"{name} has no health URL"
        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=5, verify=self.verify) as client:
            while True:
                self.check()
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(child.health_url).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise self._failed(
                        child, f"did not answer {child.health_url} within {timeout_s:.0f}s"
                    )
                time.sleep(0.5)

    def pids(self) -> set[int]:
        """Every process started here that is still alive (children and descendants)."""
        self._note_descendants()
        return {p.pid for c in self.children for p in c.seen if p.alive()}

    def stop(self, grace_s: float = 40.0) -> set[int]:
        """Stop every child, last started first; returns the PIDs that survived even
        SIGKILL (empty unless the kernel could not end one)."""
        with _signals_held():  # a second Ctrl-C must not abandon half-stopped servers
            for child in reversed(self.children):
                child.seen |= _descendants(child.proc.pid, _children_by_parent())
                _stop_one(child, grace_s)
            left = {p for c in self.children for p in c.seen if p.alive()}
            for process in left:  # left the group (Ray's reaper does), or ignored SIGTERM
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
            _wait_until(lambda: not any(p.alive() for p in left), 5.0)
            self.children.clear()
            return {p.pid for p in left if p.alive()}

    def _note_descendants(self) -> None:
        table = _children_by_parent()
        for child in self.children:
            child.seen |= _descendants(child.proc.pid, table)

    def _failed(self, child: _Child, why: str) -> ChildFailed:
        return ChildFailed(child.name, why, child.log, _tail(child.log, child.log_start))


def _stop_one(child: _Child, grace_s: float) -> None:
    proc, group = child.proc, child.proc.pid
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
    for ending, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if not _signal_group(group, ending):
            break
        _wait_until(lambda: not _group_alive(group), wait_s)
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _signal_group(group: int, sig: int) -> bool:
    """Send `sig` to a process group; False when no process of it is left."""
    if not _group_alive(group):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, sig)
    return True


def _group_alive(group: int) -> bool:
    """Any non-zombie process in process group `group`."""
    for entry in _proc_pids():
        stat = _full_stat(entry)
        if stat is not None and stat[4] == str(group) and stat[2] != "Z":
            return True
    return False


def _wait_until(done: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not done() and time.monotonic() < deadline:
        time.sleep(0.1)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    if sys.platform == "win32" or not _main_thread():
        yield
        return
    saved = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _sigint_ignored() -> bool:
    # A shell starts a background job (`driftloop up &`, CI steps) with SIGINT ignored, and
    # children inherit that; `dagster dev` maps SIGTERM to its SIGINT handler, so it would
    # then ignore SIGTERM too.
    return signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# --- /proc ----------------------------------------------------------------------------------


def _proc_pids() -> Iterator[int]:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            yield int(entry.name)


def _full_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name: [pid, comm, state, ppid, pgrp, ...]."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    head, _, rest = text.rpartition(")")
    return [str(pid), head.partition("(")[2], *rest.split()]


def _stat(pid: int) -> tuple[str, int] | None:
    """State letter and start time (clock ticks since boot) of `pid`."""
    fields = _full_stat(pid)
    return None if fields is None else (fields[2], int(fields[21]))


def _children_by_parent() -> dict[int, list[_Pid]]:
    """Every living process of the machine, by the PID of its parent."""
    table: dict[int, list[_Pid]] = {}
    for pid in _proc_pids():
        fields = _full_stat(pid)
        if fields is not None and fields[2] != "Z":
            table.setdefault(int(fields[3]), []).append(_Pid(pid, int(fields[21])))
    return table


def _descendants(root: int, table: dict[int, list[_Pid]]) -> set[_Pid]:
    found: set[_Pid] = set()
    todo = [root]
    while todo:
        for process in table.get(todo.pop(), []):
            found.add(process)
            todo.append(process.pid)
    return found


def _tail(log: Path, start: int, lines: int = TAIL_LINES) -> str:
    try:
        with log.open("rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


# --- driftloop's servers --------------------------------------------------------------------


def loop_env(settings: Settings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment every child needs to work on the same loop as this process.

    The children run in other working directories (`dagster dev` in DAGSTER_HOME), so
    every location is passed resolved; the canary job must reach this serving port.
    """
    env = dict(os.environ if base is None else base)
    env.update(
        {
            "DRIFTLOOP_HOME": str(settings.home),
            "DAGSTER_HOME": str(settings.dagster_home),
            "DRIFTLOOP_TRACKING_URI": settings.mlflow_tracking_uri,
            "DRIFTLOOP_DAGSTER_PORT": str(settings.dagster_port),
            "DRIFTLOOP_MLFLOW_PORT": str(settings.mlflow_port),
            "DRIFTLOOP_SERVE_PORT": str(settings.serve_port),
            # MLflow's server-side job runner (GenAI evaluation jobs) costs a dozen processes.
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.setdefault("DRIFTLOOP_SERVING_URL", serve_url(settings))
    for key, value in (
        ("DRIFTLOOP_LANDING_DIR", settings.landing_dir),
        ("DRIFTLOOP_PREDICTION_LOG_DIR", settings.prediction_log_dir),
    ):
        if value is not None:
            env[key] = value
    return env


def serve_url(settings: Settings) -> str:
    scheme = "https" if settings.serve_tls_certfile else "http"
    return f"{scheme}://{settings.serve_host}:{settings.serve_port}"


def services(settings: Settings, dagster_home: Path) -> dict[str, Service]:
    """The MLflow server, `dagster dev` and Ray Serve on this machine, in start order."""
    bin_dir = Path(sys.executable).parent
    mlflow = f"http://127.0.0.1:{settings.mlflow_port}"
    dagster = f"http://127.0.0.1:{settings.dagster_port}"
    serving = serve_url(settings)
    return {
        "mlflow": Service(
            "mlflow",
            [
                str(bin_dir / "mlflow"),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(settings.mlflow_port),
                "--backend-store-uri",
                settings.mlflow_tracking_uri,
                "--default-artifact-root",
                settings.mlflow_artifact_root,
            ],
            settings.home,
            settings.mlflow_port,
            mlflow,
            f"{mlflow}/health",
        ),
        "dagster": Service(
            "dagster",
            [
                str(bin_dir / "dagster"),
                "dev",
                "-w",
                str(PROJECT_ROOT / "workspace.yaml"),
                "-h",
                "127.0.0.1",
                "-p",
                str(settings.dagster_port),
            ],
            # From DAGSTER_HOME, so `dagster dev` does not also find the repo's dagster.yaml.
            dagster_home,
            settings.dagster_port,
            dagster,
            f"{dagster}/server_info",
        ),
        "serve": Service(
            "serve",
            [str(bin_dir / "driftloop"), "serve"],
            settings.home,
            settings.serve_port,
            serving,
            f"{serving}/readyz",
        ),
    }


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could not listen on `port` now. SO_REUSEADDR as servers set it:
    connections of a server stopped a moment ago linger in TIME_WAIT without holding it."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def preferred_port(port: int, host: str = "127.0.0.1") -> int:
    """`port` when a server could listen on it now, else any free one: the demo runs
    beside a UI that may already hold the usual port."""
    if not port_in_use(port, host):
        return port
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]
