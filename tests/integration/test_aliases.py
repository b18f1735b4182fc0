"""Alias moves on a real MLflow SQLite store: a new version waits as `@candidate` until its
gate, a retrain never takes a running canary's `@challenger`, moves are serialised and
idempotent, and a writer killed between two alias writes is completed at the next start."""

import json
import re
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import pytest
from mlflow import MlflowClient

from assets.canary import TAG_WEIGHT, canary_decision
from driftloop.promotion import QUEUED_ACTION, GateDecision, apply
from driftloop.registry import (
    CANDIDATE,
    CHALLENGER,
    CHAMPION,
    PREVIOUS,
    STALE_INTENT_S,
    TAG_INTENT,
    TAG_ROLLED_BACK,
    AliasConflict,
    Registry,
    RegistryError,
)
from driftloop.settings import Settings
from resources.deployment import DriftloopResource

pytestmark = pytest.mark.integration

VERSIONS = 4


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite store for the module (its schema migration takes seconds); each test
    has a registered model of its own."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def registered(uri: str, name: str, source: Path) -> Registry:
    client = MlflowClient(uri, registry_uri=uri)
    client.create_registered_model(name)
    for _ in range(VERSIONS):
        client.create_model_version(name, source=str(source))
    return Registry(uri, name)


@pytest.fixture
def registry(store: str, request: pytest.FixtureRequest, tmp_path: Path) -> Registry:
    return registered(store, re.sub(r"\W", "_", request.node.name), tmp_path)


def holders(registry: Registry) -> dict[str, str]:
    return registry.record().aliases


def passed(version: str, champion: str | None) -> GateDecision:
    return GateDecision(
        promote=True,
        reason="better",
        basis="holdout",
        metric="accuracy",
        challenger_version=version,
        challenger_score=0.9,
        champion_version=champion,
        champion_score=0.8 if champion else None,
        margin=0.0,
        floor=None,
    )


def failed(version: str, champion: str) -> GateDecision:
    return replace(passed(version, champion), promote=False)


class Watcher:
    """Polls the aliases serving reads, as a replica does, and keeps every holder seen."""

    def __init__(self, registry: Registry) -> None:
        self.registry, self.seen = registry, set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self.stop.is_set():
            aliases = self.registry.record().aliases
            self.seen |= {(a, aliases.get(a)) for a in (CHAMPION, CHALLENGER)}

    def __enter__(self) -> "Watcher":
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join()


@pytest.fixture
def canary_at_half(registry: Registry) -> Iterator[Registry]:
    """v1 champion, v2 the challenger of a running canary at 50 %."""
    registry.set_alias(CHAMPION, "1")
    registry.set_alias(CHALLENGER, "2")
    registry.set_tags("2", {TAG_WEIGHT: 0.5})
    return registry


def test_new_version_is_candidate_until_its_gate_passes(registry: Registry) -> None:
    registry.set_alias(CHAMPION, "1")
    registry.set_alias(CANDIDATE, "2")  # what registration does
    assert CHALLENGER not in holders(registry)
    decision = apply(passed("2", "1"), registry, "manual")
    assert decision.action == "recommended: run `driftloop promote 2`"
    assert holders(registry) == {CHAMPION: "1", CANDIDATE: "2"}
    registry.promote("2")  # what `driftloop promote 2` does
    assert holders(registry) == {CHAMPION: "2", PREVIOUS: "1"}

    registry.set_alias(CANDIDATE, "3")
    assert apply(passed("3", "2"), registry, "auto").applied
    assert holders(registry) == {CHAMPION: "3", PREVIOUS: "2"}

    registry.set_alias(CANDIDATE, "4")
    assert apply(failed("4", "3"), registry, "canary").action == "withdrawn from @candidate"
    assert holders(registry) == {CHAMPION: "3", PREVIOUS: "2"}


def test_the_gate_does_not_promote_over_a_champion_it_did_not_judge(registry: Registry) -> None:
    registry.set_alias(CHAMPION, "1")
    registry.set_alias(CANDIDATE, "3")
    registry.promote("2")  # someone else, while the gate judged v3 against v1
    decision = apply(passed("3", "1"), registry, "auto")
    assert not decision.applied and "@champion is v2, not the v1" in decision.action
    assert holders(registry) == {CHAMPION: "2", PREVIOUS: "1", CANDIDATE: "3"}


def test_retrain_during_a_half_canary_never_takes_its_challenger(
    canary_at_half: Registry,
) -> None:
    registry = canary_at_half
    with Watcher(registry) as watcher:
        registry.set_alias(CANDIDATE, "3")
        decision = apply(passed("3", "1"), registry, "canary")
    assert decision.action == f"{QUEUED_ACTION} of v2"
    assert (CHALLENGER, "3") not in watcher.seen and (CHAMPION, "3") not in watcher.seen
    assert holders(registry) == {CHAMPION: "1", CHALLENGER: "2", CANDIDATE: "3"}

    # The running canary ends: the queued version takes @challenger in the same move.
    moved = registry.end_canary("2", promoted=True, expected_champion="1")
    assert moved.after == {CHAMPION: "2", PREVIOUS: "1", CHALLENGER: "3"}
    assert TAG_WEIGHT not in registry.version("3").tags  # its own canary starts at 0


def test_a_rolled_back_canary_hands_over_to_the_queued_version(canary_at_half: Registry) -> None:
    registry = canary_at_half
    registry.set_alias(CANDIDATE, "3")
    apply(passed("3", "1"), registry, "canary")
    assert registry.end_canary("2", promoted=False).after == {CHAMPION: "1", CHALLENGER: "3"}


def test_canary_end_removes_only_the_challenger_it_judged(canary_at_half: Registry) -> None:
    registry = canary_at_half
    registry.set_alias(CHALLENGER, "4")  # replaced while v2's evidence was judged
    assert not registry.end_canary("2", promoted=False).changed
    assert holders(registry)[CHALLENGER] == "4"
    with pytest.raises(AliasConflict):
        registry.end_canary("4", promoted=True, expected_champion="3")
    assert holders(registry) == {CHAMPION: "1", CHALLENGER: "4"}


@pytest.fixture
def routed(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict]]:
    """An HTTP endpoint on 127.0.0.1 answering `POST /admin/routing` as serving's admin API
    does (401 without the key), configured as the home's serving; yields each accepted
    body. The canary job's real client calls it, without a Ray Serve app to start."""
    key, bodies = "k" * 32, []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            allowed = self.path == "/admin/routing" and self.headers.get("X-API-Key") == key
            if allowed:
                bodies.append(body)
            answer = json.dumps(body if allowed else {"detail": "admin key required"}).encode()
            self.send_response(200 if allowed else 401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *_: object) -> None:  # quiet test output
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("DRIFTLOOP_SERVING_URL", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("DRIFTLOOP_ADMIN_API_KEY", key)
    try:
        yield bodies
    finally:
        server.shutdown()
        server.server_close()


def test_canary_asset_starts_a_queued_candidate_once_no_canary_runs(
    home: Settings, routed: list[dict], tmp_path: Path
) -> None:
    registry = registered(home.mlflow_tracking_uri, home.model_name, tmp_path)
    registry.set_alias(CHAMPION, "1")
    registry.set_alias(CHALLENGER, "2")
    registry.set_alias(CANDIDATE, "3")
    apply(passed("3", "1"), registry, "canary")  # queued behind v2
    registry.promote("2")  # v2's canary ended by hand: nothing runs for v3 yet
    result = dg.materialize(
        [canary_decision], resources={"driftloop": DriftloopResource(home=str(home.home))}
    )
    metadata = result.asset_materializations_for_node("canary_decision")[0].metadata
    assert metadata["verdict"].value == "start" and metadata["challenger_version"].value == "3"
    assert holders(registry) == {CHAMPION: "2", PREVIOUS: "1", CHALLENGER: "3"}
    assert routed == [{"canary_weight": 0.05}]  # with the admin key: else a 401 fails the run


def test_retried_rollback_is_a_no_op(registry: Registry) -> None:
    registry.set_alias(CHAMPION, "1")
    registry.promote("2")
    first = registry.rollback(expected_champion="2")
    assert first.changed and first.after == {CHAMPION: "1"}
    again = registry.rollback(expected_champion="2")
    assert not again.changed and holders(registry) == {CHAMPION: "1"}
    # Without the expectation a retry finds nothing to roll back to: never a swap back.
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        registry.rollback()
    assert holders(registry) == {CHAMPION: "1"}
    assert registry.version("2").tags[TAG_ROLLED_BACK] == "replaced by v1"
    assert not registry.promote("1").changed  # a retried promote is a no-op too


def race(*moves: Callable[[], object]) -> list[Exception]:
    """Start every move at once, each in its own thread; the errors they raised."""
    start, errors = threading.Barrier(len(moves)), []

    def run(move: Callable[[], object]) -> None:
        start.wait()
        try:
            move()
        except Exception as error:  # the test asserts there are none
            errors.append(error)

    threads = [threading.Thread(target=run, args=(move,)) for move in moves]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_concurrent_promote_and_rollback_leave_a_serial_outcome(registry: Registry) -> None:
    # From champion v2 / previous v1 the two serial orders end in exactly these states.
    serial = [{CHAMPION: "2"}, {CHAMPION: "3", PREVIOUS: "1"}]
    other = Registry(registry.tracking_uri, registry.name)  # a second client, as the CLI
    for _ in range(8):
        registry.delete_alias(PREVIOUS)
        registry.set_alias(CHAMPION, "1")
        registry.promote("2")
        assert race(lambda: registry.promote("3"), other.rollback) == []
        state = holders(registry)
        assert state in serial
        assert state.get(PREVIOUS) != state[CHAMPION]
        assert all(registry.version(v) for v in state.values())
        assert TAG_INTENT not in registry.record().tags


CRASHING_PROMOTE = """
import os, signal, sys
from driftloop.registry import Registry

writes = []
write = Registry._write_alias

def write_then_die(self, alias, version):
    write(self, alias, version)
    writes.append(alias)
    if len(writes) == 2:  # challenger removed, previous set; champion never written
        os.kill(os.getpid(), signal.SIGKILL)

Registry._write_alias = write_then_die
Registry(sys.argv[1], sys.argv[2]).promote("3")
"""


def test_a_writer_killed_between_alias_writes_is_completed_at_the_next_start(
    registry: Registry,
) -> None:
    registry.set_alias(CHAMPION, "1")
    registry.promote("2")
    registry.set_alias(CHALLENGER, "3")
    crashed = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(CRASHING_PROMOTE),
            registry.tracking_uri,
            registry.name,
        ],
        capture_output=True,
        timeout=120,
    )
    assert crashed.returncode == -9, crashed.stderr.decode()[-2000:]
    record = registry.record()
    assert record.aliases == {CHAMPION: "2", PREVIOUS: "2"}  # the half-done move
    assert json.loads(record.tags[TAG_INTENT])["target"] == {CHAMPION: "3", PREVIOUS: "2"}

    restarted = Registry(registry.tracking_uri, registry.name)
    repaired = restarted.repair()  # the lock died with its holder: no wait here
    assert repaired is not None and repaired.after == {CHAMPION: "3", PREVIOUS: "2"}
    assert restarted.record() == type(record)({CHAMPION: "3", PREVIOUS: "2"}, {})
    assert restarted.repair() is None


def test_without_a_lock_a_fresh_intent_blocks_moves_and_a_stale_one_is_completed(
    registry: Registry,
) -> None:
    """A remote MLflow server has no lock: the intent tag is the only token."""
    registry.lock_path = None
    registry.set_alias(CHAMPION, "1")
    intent = {"id": "other", "reason": "promote v2", "at": time.time(), "target": {CHAMPION: "2"}}
    registry.set_model_tag(TAG_INTENT, json.dumps(intent))
    with pytest.raises(AliasConflict, match="another alias move is under way"):
        registry.promote("3")
    assert registry.repair() is None  # its writer may still be at it
    stale = {**intent, "at": time.time() - STALE_INTENT_S - 1}  # its writer died
    registry.set_model_tag(TAG_INTENT, json.dumps(stale))
    assert registry.promote("3").before == {CHAMPION: "2"}  # completed, then moved on
    assert holders(registry) == {CHAMPION: "3", PREVIOUS: "2"}
