"""`driftloop bench chaos`: availability of two replicas under steady load while faults are
injected: a replica SIGKILLed, HAProxy SIGKILLed, the Serve controller SIGKILLed (Ray
restarts it), the MLflow server stopped and restarted, and aliases moved.

Everything runs in a fresh home: a model trained by the caller's `train` (the CLI runs the
real training job), registered twice more so there are three versions (`@champion`,
`@challenger` at a 50 % canary, and a `@candidate` no gate passed, which must never answer),
an `mlflow server` process on the home's SQLite store with local artifacts (so that it can
be stopped), and the application on Ray Serve with two replicas (`serving.launch`).

The load is `WORKERS` closed-loop httpx clients, each paced to its share of `RATE` requests/s
and retrying as `driftloop.client` does: a refused or dropped connection after a full-jitter
backoff, a 503 after its Retry-After, never a timeout or a 500. Every attempt is counted
(a retry is a new request), so `availability` is answered attempts over attempts, and an
outage costs a backing-off client a few attempts, not its rate times the outage:
`longest_gap_s` and `outage_s` give the time the service did not answer.

The prediction log is checked once the application stopped cleanly: every answered
request id must be in it (read with `driftloop.monitoring.read_log`), except records of a
SIGKILLed replica's last flush interval, counted apart (`log_records_lost_to_sigkill`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.serve import champion_payload
from driftloop.client import BACKOFF_BASE_S, BACKOFF_CAP_S, MAX_RETRY_AFTER_S
from driftloop.monitoring import read_log
from driftloop.registry import CANDIDATE, CHALLENGER, CHAMPION, PREVIOUS, Registry
from driftloop.settings import Settings
from serving import launch
from serving.app import ServeArgs

REPLICAS = 2
DEPLOYMENT = "driftloop"  # the ModelServer deployment's name in `serving.app`
RATE = 200.0  # requests/s over all workers: a steady load both cores carry with room
# Seconds a process this run started may take to exit after stop before it counts as left.
LEFTOVER_GRACE_S = 10.0
WORKERS = 8
RETRIES = 3  # `driftloop.client.Client`'s default
TIMEOUT_S = 5.0
CANARY_WEIGHT = 0.5  # both slots take traffic, so moving either is seen by clients
MLFLOW_DOWN_S = 10.0
# A SIGKILLed replica loses what it answered since its last published segment: one flush
# interval, plus the time that flush takes on a loaded machine.
SIGKILL_SLACK_S = 1.0
RECOVERY_TIMEOUT_S = 120.0
# Outages shorter than this are a slow answer, not an outage.
OUTAGE_MIN_S = 1.0
FAULTS = ("promote", "kill_replica", "rollback", "kill_haproxy", "kill_controller")
FAULTS += ("restart_mlflow", "to_challenger")


@dataclass
class Attempt:
    sent: float
    done: float
    cause: str  # "ok", or why it failed
    version: str | None = None
    request_id: str | None = None


@dataclass
class Fault:
    name: str
    at_s: float
    detail: str
    recovered_after_s: float | None = None
    recovered: bool = True


@dataclass
class AliasState:
    """The aliases from a time on: `since` is when the move began (a replica may see its
    first write before the move returns)."""

    since: float
    until: float
    holders: dict[str, str]


class Load:
    """Closed-loop clients at a fixed pace on a thread of their own; every attempt kept."""

    def __init__(self, url: str, path: str, body: dict[str, Any], rate: float) -> None:
        self.url, self.path = url, path
        self.payload = json.dumps(body).encode()
        self.interval = WORKERS / rate
        self.attempts: list[Attempt] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=60)

    async def _run(self) -> None:
        await asyncio.gather(*(self._worker(i) for i in range(WORKERS)))

    async def _worker(self, index: int) -> None:
        timeout = httpx.Timeout(TIMEOUT_S, connect=2.0)
        headers = {"Content-Type": "application/json"}
        async with httpx.AsyncClient(base_url=self.url, timeout=timeout, headers=headers) as http:
            next_at = time.time() + index * self.interval / WORKERS
            while not self.stopping.is_set():
                await asyncio.sleep(max(0.0, next_at - time.time()))
                await self._call(http)
                next_at = max(next_at + self.interval, time.time())

    async def _call(self, http: httpx.AsyncClient) -> None:
        for attempt in range(RETRIES + 1):
            wait = await self._attempt(http, attempt)
            if wait is None or attempt == RETRIES or self.stopping.is_set():
                return
            await asyncio.sleep(wait)

    async def _attempt(self, http: httpx.AsyncClient, attempt: int) -> float | None:
        """One request; the pause before its retry, or None when it is not retried."""
        sent = time.time()
        backoff = random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt))
        try:
            response = await http.post(self.path, content=self.payload)
        except (httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout):
            self.attempts.append(Attempt(sent, time.time(), "timeout"))
            return None  # it may have been answered: the product client does not repeat it
        except httpx.ConnectError as error:
            cause = "connection_refused" if _refused(error) else "connect_error"
            self.attempts.append(Attempt(sent, time.time(), cause))
            return backoff
        except httpx.TransportError:
            self.attempts.append(Attempt(sent, time.time(), "connection_dropped"))
            return backoff
        done = time.time()
        if response.status_code == 200:
            try:
                request_id = response.json()["request_id"]
            except (ValueError, KeyError):
                self.attempts.append(Attempt(sent, done, "http_200_unreadable"))
                return None
            version = response.headers.get("x-model-version")
            self.attempts.append(Attempt(sent, done, "ok", version, request_id))
            return None
        if response.status_code == 503:
            retry_after = response.headers.get("retry-after", "")
            shed = retry_after.isdigit()
            self.attempts.append(Attempt(sent, done, "http_503_shed" if shed else "http_503"))
            if shed and float(retry_after) <= MAX_RETRY_AFTER_S:
                return float(retry_after)
            return backoff
        cause = f"http_{response.status_code}"
        if response.status_code == 404 and response.text.startswith("Path '"):
            cause = "http_404_no_route"  # HAProxy's own answer before it knows the backends
        self.attempts.append(Attempt(sent, done, cause))
        return None


def _refused(error: BaseException) -> bool:
    """Whether a failed connect was refused (nothing listening), in httpx's chain of causes."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError) or "refused" in str(seen).lower():
            return True
        seen = seen.__cause__ or seen.__context__
    return False


# --- processes ---------------------------------------------------------------------------


def _tree() -> list[psutil.Process]:
    return psutil.Process().children(recursive=True)


def _descendants() -> set[tuple[int, float]]:
    """This process's descendants by pid and start time (a pid alone may be reused)."""
    found = set()
    for process in _tree():
        with contextlib.suppress(psutil.Error):
            found.add((process.pid, process.create_time()))
    return found


def _titled(prefix: str) -> list[psutil.Process]:
    """Processes of this run's Ray node whose title starts with `prefix`."""
    found = []
    for process in _tree():
        try:
            if " ".join(process.cmdline()).startswith(prefix):
                found.append(process)
        except psutil.Error:
            continue
    return found


def _wait(done: Callable[[], bool], timeout_s: float = RECOVERY_TIMEOUT_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if done():
            return True
        time.sleep(0.2)
    return False


class MlflowServer:
    """`mlflow server` on the home's SQLite store and artifact folder, stoppable."""

    def __init__(self, settings: Settings, port: int) -> None:
        self.settings = settings
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--workers", "1",
            "--backend-store-uri", self.settings.mlflow_tracking_uri,
            "--default-artifact-root", self.settings.mlflow_artifact_root,
        ]  # fmt: skip
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.settings.logs.mkdir(parents=True, exist_ok=True)
        with open(self.settings.logs / "chaos-mlflow.log", "ab") as log:
            self.process = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        if not _wait(self.healthy, 120):
            raise RuntimeError(f"mlflow server on port {self.port} did not become healthy")

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        """SIGTERM to its process group (uvicorn and its workers), SIGKILL after 20 s."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


# --- the run -----------------------------------------------------------------------------


@dataclass
class Soak:
    """One soak's state: what was started, what happened and when."""

    settings: Settings
    url: str
    registry: Registry
    mlflow: MlflowServer
    versions: dict[str, str]
    started: float = field(default_factory=time.time)
    faults: list[Fault] = field(default_factory=list)
    aliases: list[AliasState] = field(default_factory=list)
    seen: set[tuple[int, float]] = field(default_factory=set)
    progress: Callable[[str], None] = print

    def note_processes(self) -> None:
        """Remember every descendant, to check each is gone after stop."""
        self.seen |= _descendants()

    def elapsed(self) -> float:
        return time.time() - self.started

    def inject(self, name: str) -> Fault:
        at = time.time()
        self.progress(f"{at - self.started:7.1f} s  {name} ...")
        detail, recovered = getattr(self, f"_{name}")()
        fault = Fault(name, round(at - self.started, 2), detail)
        if recovered is not None:
            when = recovered()
            fault.recovered_after_s = round(when - at, 2) if when else None
            fault.recovered = bool(when)
        self.faults.append(fault)
        self.note_processes()
        after = (
            "" if fault.recovered_after_s is None else f", recovered in {fault.recovered_after_s} s"
        )
        self.progress(f"{fault.at_s:7.1f} s  {name}: {detail}{after}")
        return fault

    # Each fault returns what it did, and a function that waits for recovery and returns
    # when it happened (time.time()), or 0 when it did not within RECOVERY_TIMEOUT_S.

    def _kill_replica(self) -> tuple[str, Callable[[], float]]:
        victim = random.choice(_titled(f"ray::ServeReplica:{launch.APP_NAME}:{DEPLOYMENT}"))
        victim.send_signal(signal.SIGKILL)

        def recovered() -> float:
            # The controller sees the death within a moment (the actor's owner is told);
            # until then its status still counts the dead replica as running.
            _wait(lambda: not _serve_running(REPLICAS), timeout_s=10)
            return time.time() if _wait(lambda: _serve_running(REPLICAS)) else 0.0

        return f"SIGKILL replica pid {victim.pid}", recovered

    def _kill_haproxy(self) -> tuple[str, Callable[[], float]]:
        pids = launch.haproxy_pids(self.settings)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

        def recovered() -> float:
            def answering() -> bool:
                alive = launch.haproxy_pids(self.settings)
                return bool(alive) and not set(alive) & set(pids) and _ready(self.url)

            return time.time() if _wait(answering) else 0.0

        return f"SIGKILL HAProxy pid(s) {pids}", recovered

    def _kill_controller(self) -> tuple[str, Callable[[], float]]:
        (victim,) = _titled("ray::ServeController")
        victim.send_signal(signal.SIGKILL)

        def recovered() -> float:
            def restarted() -> bool:
                return any(p.pid != victim.pid for p in _titled("ray::ServeController"))

            return time.time() if _wait(restarted) and _wait(_serve_running) else 0.0

        return f"SIGKILL Serve controller pid {victim.pid} (Ray restarts it)", recovered

    def _restart_mlflow(self) -> tuple[str, Callable[[], float]]:
        pid = self.mlflow.process.pid if self.mlflow.process else None
        self.mlflow.stop()
        time.sleep(MLFLOW_DOWN_S)
        self.mlflow.start()
        return (
            f"mlflow server pid {pid} stopped (SIGTERM), restarted {MLFLOW_DOWN_S:.0f} s later",
            (lambda: time.time()),
        )

    def _promote(self) -> tuple[str, None]:
        challenger = self.registry.by_alias(CHALLENGER)
        assert challenger is not None, "no @challenger to promote"
        return self._move(
            f"promote v{challenger.version}", lambda: self.registry.promote(challenger.version)
        ), None

    def _rollback(self) -> tuple[str, None]:
        champion = self.registry.by_alias(CHAMPION)
        assert champion is not None
        return self._move(
            f"rollback(expected_champion=v{champion.version})",
            lambda: self.registry.rollback(expected_champion=champion.version),
        ), None

    def _to_challenger(self) -> tuple[str, None]:
        """The version rolled back becomes the challenger again, for the next promotion."""
        champion = self.registry.by_alias(CHAMPION)
        assert champion is not None
        other = next(
            v for v in (self.versions[CHAMPION], self.versions[CHALLENGER]) if v != champion.version
        )
        return self._move(
            f"v{other} to @challenger", lambda: self.registry.to_challenger(other)
        ), None

    def _move(self, what: str, move: Callable[[], Any]) -> str:
        since = time.time()
        moved = move()
        self.aliases.append(AliasState(since, time.time(), dict(moved.after)))
        return f"{what}: {_holders(moved.before)} -> {_holders(moved.after)}"


def _holders(holders: dict[str, str]) -> str:
    return ", ".join(f"@{alias}=v{version}" for alias, version in sorted(holders.items()))


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _serve_running(replicas: int = 0) -> bool:
    """Whether the controller answers, the application runs and (if given) that many
    replicas of its deployment run."""
    from ray import serve

    try:
        application = serve.status().applications[launch.APP_NAME]
    except Exception:  # the controller is still recovering
        return False
    states = {str(k).rsplit(".", 1)[-1]: v for k, v in _replica_states(application).items()}
    running = str(application.status).endswith("RUNNING")
    return running and states.get("RUNNING", 0) >= replicas


def _replica_states(application: Any) -> dict[Any, int]:
    return application.deployments[DEPLOYMENT].replica_states


def _three_versions(registry: Registry) -> dict[str, str]:
    """`@champion` as trained, the same model registered again as `@challenger` and once
    more as `@candidate` (a version no gate passed: serving must never answer with it)."""
    champion = registry.by_alias(CHAMPION)
    assert champion is not None, "training promoted no @champion"
    source = registry.client.get_model_version(registry.name, champion.version)
    versions = {CHAMPION: champion.version}
    for alias in (CHALLENGER, CANDIDATE):
        created = registry.register(
            source.source.removeprefix("models:/"),
            champion.run_id or "",
            champion.tags,
            f"re-registered by driftloop bench chaos as @{alias}",
        )
        registry.set_alias(alias, created.version)
        versions[alias] = created.version
    registry.delete_alias(PREVIOUS)
    return versions


def schedule(seconds: float, quick: bool) -> tuple[float, float]:
    """Seconds of load before the first fault, and from one fault to the next: quick, one
    after the other; else spread evenly, the last one a minute before the end."""
    if quick:
        return 10.0, 5.0
    return 20.0, max(5.0, (seconds - 80.0) / (len(FAULTS) - 1))


@contextlib.contextmanager
def fresh_home(base: Settings) -> Iterator[Settings]:
    """A home of its own in a temporary folder, with a free serving port."""
    with tempfile.TemporaryDirectory(prefix="driftloop-chaos-") as tmp:
        yield base.model_copy(
            update={
                "home": Path(tmp) / "home",
                "tracking_uri": None,
                "artifact_root": None,
                "prediction_log_dir": None,
                "landing_dir": None,
                "serve_port": launch.free_port(),
            }
        )


def run(
    base: Settings,
    train: Callable[[Settings], None],
    minutes: float,
    quick: bool,
    json_path: Path | None = None,
    rate: float = RATE,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train, start MLflow and two replicas, soak under faults, stop, and count."""
    with fresh_home(base) as home:
        train(home)
        before = _descendants()  # this process's own (e.g. multiprocessing's tracker)
        mlflow = MlflowServer(home, launch.free_port())
        mlflow.start()
        served = home.model_copy(update={"tracking_uri": mlflow.url})
        registry = Registry(mlflow.url, home.model_name)
        seen: set[tuple[int, float]] = set()
        try:
            versions = _three_versions(registry)
            instance = champion_payload(registry, home.home / "chaos" / "model")
            result = _soak(
                served, registry, mlflow, versions, instance, minutes, quick, rate, progress, seen
            )
        finally:
            seen |= _descendants()
            mlflow.stop()
        result["leftover_pids"] = _leftovers(seen - before)
        result["haproxy_pids_after_stop"] = launch.haproxy_pids(home)
    if json_path is not None:
        json_path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _soak(
    settings: Settings,
    registry: Registry,
    mlflow: MlflowServer,
    versions: dict[str, str],
    instance: dict[str, Any],
    minutes: float,
    quick: bool,
    rate: float,
    progress: Callable[[str], None],
    seen: set[tuple[int, float]],
) -> dict[str, Any]:
    args = ServeArgs(
        home=str(settings.home),
        tracking_uri=settings.tracking_uri,
        num_replicas=REPLICAS,
        canary_weight=CANARY_WEIGHT,
    )
    path = f"/v1/models/{settings.model_name}:predict"
    seconds = minutes * 60
    try:
        url = launch.start(settings, args)
        soak = Soak(settings, url, registry, mlflow, versions, progress=progress, seen=seen)
        soak.aliases.append(AliasState(0.0, 0.0, dict(registry.record().aliases)))
        soak.note_processes()
        load = Load(url, path, {"instances": [instance]}, rate)
        soak.started = time.time()
        load.start()
        first, gap = schedule(seconds, quick)
        time.sleep(first)
        for i, name in enumerate(FAULTS):  # each fault once, on schedule or after recovery
            if not quick:
                time.sleep(max(0.0, first + i * gap - soak.elapsed()))
            soak.inject(name)
            if quick:
                time.sleep(gap)
        while soak.elapsed() < seconds:
            soak.note_processes()
            time.sleep(1)
        load.stop()
        ended = time.time()
        soak.note_processes()
    finally:
        launch.stop(settings)
    # Every replica closed its log on the clean stop: the log is complete but for SIGKILLs.
    logged = read_log(settings.prediction_log)
    return _report(soak, load.attempts, logged, ended, settings, versions, rate)


def _report(
    soak: Soak,
    attempts: list[Attempt],
    logged: Any,
    ended: float,
    settings: Settings,
    versions: dict[str, str],
    rate: float,
) -> dict[str, Any]:
    started = soak.started
    ok = [a for a in attempts if a.cause == "ok"]
    failed = Counter(a.cause for a in attempts if a.cause != "ok")
    gaps = _gaps([a.done for a in ok], started, ended)
    logged_ids = set(logged["request_id"]) if not logged.empty else set()
    kills = [started + f.at_s for f in soak.faults if f.name == "kill_replica"]
    bound = settings.prediction_log_flush_s + SIGKILL_SLACK_S
    lost_kill = lost_other = 0
    for answer in ok:
        if answer.request_id in logged_ids:
            continue
        if any(kill - bound <= answer.done <= kill + 0.5 for kill in kills):
            lost_kill += 1
        else:
            lost_other += 1
    ungated, stale = _gating(ok, soak.aliases)
    by_fault: dict[str, Counter[str]] = {}
    for attempt in attempts:
        if attempt.cause != "ok":
            cause = _last_fault(soak.faults, attempt.sent - started)
            by_fault.setdefault(cause, Counter())[attempt.cause] += 1
    return {
        "minutes": round((ended - started) / 60, 2),
        "offered_rate_per_s": rate,
        "load": f"{WORKERS} closed-loop httpx clients paced to {rate:.0f} requests/s in all, "
        f"retrying as driftloop.client does (refused/dropped connections with full-jitter "
        f"backoff, 503 after Retry-After, up to {RETRIES} retries; never a timeout or a 500); "
        f"every attempt counted; timeout {TIMEOUT_S:.0f} s",
        "replicas": REPLICAS,
        "canary_weight": CANARY_WEIGHT,
        "versions": versions,
        "requests": len(attempts),
        "answered": len(ok),
        "availability": round(len(ok) / len(attempts), 6) if attempts else None,
        "failed_by_cause": dict(failed.most_common()),
        # Each failure under the fault injected last before it was sent.
        "failed_after_fault": {k: dict(v.most_common()) for k, v in by_fault.items()},
        "longest_gap_s": round(max((g for _, g in gaps), default=0.0), 2),
        "outage_s": round(sum(g for _, g in gaps if g >= OUTAGE_MIN_S), 2),
        "gaps_over_1s": [
            {"at_s": round(at, 2), "seconds": round(g, 2)} for at, g in gaps if g >= OUTAGE_MIN_S
        ],
        "log_records_lost": lost_kill + lost_other,
        "log_records_lost_to_sigkill": lost_kill,
        "log_records_lost_other": lost_other,
        "log_sigkill_bound_s": bound,
        "log_records_read": len(logged),
        "log_files_skipped": len(logged.attrs.get("skipped_files", [])),
        "ungated_answers": ungated,
        "answers_after_demotion": stale,
        "faults": [asdict(f) for f in soak.faults],
        "machine_cpus": os.cpu_count(),
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
    }


def _last_fault(faults: list[Fault], at_s: float) -> str:
    before = [f for f in faults if f.at_s <= at_s]
    return f"{before[-1].name}@{before[-1].at_s:.0f}s" if before else "none"


def _gaps(times: list[float], started: float, ended: float) -> list[tuple[float, float]]:
    """(start, length) of each stretch without a successful answer, start relative."""
    marks = [started, *sorted(times), ended]
    return [(a - started, b - a) for a, b in itertools.pairwise(marks) if b - a > 0.2]


def _gating(ok: list[Attempt], states: list[AliasState]) -> tuple[int, dict[str, Any]]:
    """Answers by a version that had never held `@champion` or `@challenger` when it
    answered (ungated), and answers by one that had left both (demoted, still loaded)."""
    ungated = 0
    stale = 0
    worst = 0.0
    for answer in ok:
        gated: set[str] = set()
        current: set[str] = set()
        left_at = 0.0
        for state in states:
            if state.since > answer.done:
                break
            serving = {state.holders.get(CHAMPION), state.holders.get(CHALLENGER)} - {None}
            if answer.version in current and answer.version not in serving:
                left_at = state.until
            gated |= serving
            current = serving
        if answer.version not in gated:
            ungated += 1
        elif answer.version not in current:
            stale += 1
            worst = max(worst, answer.done - left_at)
    return ungated, {"count": stale, "longest_after_move_s": round(worst, 2)}


def _leftovers(seen: set[tuple[int, float]], grace_s: float = LEFTOVER_GRACE_S) -> list[int]:
    """Processes this run started that still run `grace_s` after stop (pid and start time
    both match): a Ray worker told to exit may take a moment on a loaded machine."""
    ours = []
    for pid, created in seen:
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(pid)
            if process.create_time() == created:
                ours.append(process)
    _, alive = psutil.wait_procs(ours, timeout=grace_s)
    return sorted(p.pid for p in alive)


def table(result: dict[str, Any]) -> str:
    """The soak as a person reads it."""
    causes = ", ".join(f"{k} {v}" for k, v in result["failed_by_cause"].items()) or "none"
    lines = [
        f"chaos soak: {result['minutes']} min, {result['replicas']} replicas, "
        f"{result['offered_rate_per_s']:.0f} requests/s offered",
        f"{'availability':<28}{result['availability']:.4%} "
        f"({result['answered']} of {result['requests']} requests)",
        f"{'failed by cause':<28}{causes}",
        f"{'longest gap':<28}{result['longest_gap_s']} s (outages over 1 s: "
        f"{result['outage_s']} s in all)",
        f"{'log records lost':<28}{result['log_records_lost']} "
        f"({result['log_records_lost_to_sigkill']} to SIGKILL, "
        f"{result['log_records_lost_other']} other)",
        f"{'ungated answers':<28}{result['ungated_answers']}",
        f"{'answers after demotion':<28}{result['answers_after_demotion']['count']} "
        f"(up to {result['answers_after_demotion']['longest_after_move_s']} s after the move)",
        f"{'processes left after stop':<28}{len(result['leftover_pids'])}",
        "failed after each fault:",
        *(
            f"  {fault:<24}{', '.join(f'{k} {v}' for k, v in causes.items())}"
            for fault, causes in result["failed_after_fault"].items()
        ),
        "faults:",
    ]
    for fault in result["faults"]:
        recovered = fault["recovered_after_s"]
        after = "" if recovered is None else f" (recovered after {recovered} s)"
        lines.append(f"  {fault['at_s']:>7.1f} s  {fault['name']:<16}{fault['detail']}{after}")
    return "\n".join(lines)
