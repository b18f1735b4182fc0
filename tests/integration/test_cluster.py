"""The cluster path, run: serving/serve_config.yaml deployed by `launch.start` (the same
function `driftloop serve` calls) onto a two-node Ray cluster on this machine, HAProxy on
both nodes, one one-CPU replica on each.

Through the head's HAProxy both nodes' replicas answer (`X-Replica` names the replica, the
cluster script maps replicas to nodes from Ray's actor table); an alias move reaches both;
with the worker node SIGKILLed under load the head's replica keeps answering. The numbers
go to docs/benchmarks.md ("Serving on a two-node cluster"), printed with `-s`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pandas as pd
import psutil
import pytest
from mlflow import MlflowClient

from driftloop.registry import CHAMPION
from driftloop.settings import Settings, load_settings
from serving import launch
from tests.registry_stack import two_regressors
from tests.serving.conftest import ADMIN_KEY, diabetes_table

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Both nodes as `ray start` would make them, each with one CPU, in a process of their own;
# the worker node gets its own HAProxy ports (one machine: both bind on it). Then the
# deploy, as `driftloop serve` does it but against the cluster's address. It prints one
# JSON line (URL, node ids, replica -> node), then obeys stdin: `kill` SIGKILLs every
# process of the worker node; end of input stops Serve and both nodes.
CLUSTER = """
import json, os, signal, sys
import psutil, ray
from ray._private import state
from ray._private.node import Node
from ray._private.parameter import RayParams

def node(head, **extra):
    params = RayParams(num_cpus=1, node_ip_address="127.0.0.1", include_log_monitor=False,
                       object_store_memory=256 * 2**20, **extra)
    return Node(params, head=head, shutdown_at_exit=True, spawn_reaper=True)

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
head = node(True, include_dashboard=False, no_monitor=True)
os.environ.update(json.loads(os.environ["CLUSTER_WORKER_ENV"]))
worker = node(False, gcs_address=head.gcs_address, node_manager_port=0,
              dashboard_agent_listen_port=None, min_worker_port=0, max_worker_port=0)
# Imported while the nodes' processes come up.
from driftloop.settings import load_settings
from serving import launch
from serving.app import ServeArgs
settings = load_settings()
try:
    url = launch.start(settings, ServeArgs(num_replicas=2), address=head.address)
    replicas = {a["Name"].rsplit("#", 1)[1]: a["Address"]["NodeID"]
                for a in state.actors().values()
                if a["Name"].startswith("SERVE_REPLICA::") and a["State"] == "ALIVE"}
    print(json.dumps({"url": url, "address": head.address, "head": head.node_id,
                      "worker": worker.node_id,
                      "replicas": replicas}), flush=True)
    for line in sys.stdin:
        if line.strip() == "kill":
            raylet = psutil.Process(worker.all_processes["raylet"][0].process.pid)
            doomed = [raylet, *raylet.children(recursive=True)]
            doomed += [psutil.Process(i.process.pid) for infos in worker.all_processes.values()
                       for i in infos if i.process.pid != raylet.pid]
            for process in doomed:
                try:
                    process.kill()
                except psutil.NoSuchProcess:
                    pass
            print(json.dumps({"killed": len(doomed)}), flush=True)
finally:
    launch.stop(settings)
    for each in (worker, head):
        each.kill_all_processes(check_alive=False, allow_graceful=True, wait=True)
"""

LOAD_THREADS = 3
BEFORE_KILL_S = 2.0
AFTER_KILL_S = 8.0
SWAP_WITHIN_S = 30.0
READY_WITHIN_S = 60.0


@dataclass
class Cluster:
    settings: Settings
    process: subprocess.Popen[str]
    url: str
    worker_url: str
    nodes: dict[str, str]  # node id -> "head" / "worker"
    replicas: dict[str, str]  # Serve replica id -> node id
    versions: tuple[str, str]
    instance: dict[str, Any]

    @property
    def predict(self) -> str:
        return f"/v1/models/{self.settings.model_name}:predict"

    def node_of(self, answer: httpx.Response) -> str:
        """The node whose replica answered (X-Replica starts with Serve's replica id)."""
        return self.nodes[self.replicas[answer.headers["X-Replica"].rsplit("-", 1)[0]]]

    def command(self, line: str) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("cluster")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DRIFTLOOP_HOME", str(root / "home"))
        patch.setenv("DRIFTLOOP_SERVE_PORT", str(launch.free_port()))
        patch.setenv("DRIFTLOOP_ADMIN_API_KEY", ADMIN_KEY)
        settings = load_settings()
        uri = settings.mlflow_tracking_uri
        MlflowClient(uri, registry_uri=uri).search_registered_models()  # the store, once
        # The cluster's environment: HAProxy mode and its per-home paths and ports as a
        # local start has them, every Ray process on loopback (one machine). Nothing is in
        # flight when Serve stops, so replicas need not wait the local 10 s for HAProxy.
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_SERVE_")}
        env.update(launch.serve_env(settings, haproxy=True))
        env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] = "1"
        worker_port = launch.free_port()
        worker_env = {
            "RAY_SERVE_WORKER_PROXY_HTTP_PORT": str(worker_port),
            **{variable: str(launch.free_port()) for variable in launch.HAPROXY_PORT_VARIABLES},
        }
        env["CLUSTER_WORKER_ENV"] = json.dumps(worker_env)
        process = subprocess.Popen(
            [sys.executable, "-c", CLUSTER],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        started: dict[str, Any] = {}
        try:
            # Registered while the cluster starts: its replicas find @champion by polling.
            versions = two_regressors(settings)
            assert process.stdout is not None
            line = process.stdout.readline()
            assert line, "the cluster did not start or the deploy failed (see stderr)"
            started = json.loads(line)
            row = diabetes_table().drop(columns="target").iloc[0]
            yield Cluster(
                settings=settings,
                process=process,
                url=started["url"],
                worker_url=f"http://127.0.0.1:{worker_port}",
                nodes={started["head"]: "head", started["worker"]: "worker"},
                replicas=started["replicas"],
                versions=versions,
                instance={k: None if pd.isna(v) else v for k, v in row.items()},
            )
        finally:
            stop(process, started["address"] if started else None)


def stop(process: subprocess.Popen[str], address: str | None) -> None:
    """End of input: the script stops Serve and both nodes, every process of them; it must
    not hang."""
    assert process.stdin is not None
    process.stdin.close()
    try:
        process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    if address is not None:
        left = [
            p
            for p in psutil.process_iter(["cmdline"])
            if address in " ".join(p.info["cmdline"] or [])
        ]
        assert not left, left


@dataclass
class Load:
    """Paced requests from a few threads: each answer's node and time, each failure's."""

    cluster: Cluster
    answered: list[tuple[float, str]] = field(default_factory=list)
    failed: list[tuple[float, str]] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(base_url=self.cluster.url, timeout=10) as client:
            while not self.done.is_set():
                try:
                    answer = client.post(
                        self.cluster.predict, json={"instances": [self.cluster.instance]}
                    )
                except httpx.HTTPError as error:
                    self.failed.append((time.monotonic(), type(error).__name__))
                else:
                    if answer.status_code == 200:
                        self.answered.append((time.monotonic(), self.cluster.node_of(answer)))
                    else:
                        self.failed.append((time.monotonic(), str(answer.status_code)))
                time.sleep(0.02)


def test_replicas_on_both_nodes_answer_swap_and_survive_the_worker(cluster: Cluster) -> None:
    assert sorted(map(cluster.nodes.get, cluster.replicas.values())) == ["head", "worker"]
    first, second = cluster.versions
    body = {"instances": [cluster.instance]}

    # Answers through the head's HAProxy come from both nodes (once both replicas have
    # found @champion); the worker's own HAProxy answers too (a proxy on every node).
    with httpx.Client(base_url=cluster.url, timeout=30) as client:
        deadline, ready = time.monotonic() + READY_WITHIN_S, set()
        while ready != {"head", "worker"}:
            assert time.monotonic() < deadline, f"only {ready} answered"
            answer = client.post(cluster.predict, json=body)
            if answer.status_code == 200:
                ready.add(cluster.node_of(answer))
            else:
                time.sleep(0.2)
        answers = [client.post(cluster.predict, json=body) for _ in range(40)]
    assert {a.status_code for a in answers} == {200}
    per_node = Counter(map(cluster.node_of, answers))
    assert set(per_node) == {"head", "worker"}, per_node
    assert {a.headers["X-Model-Version"] for a in answers} == {first}
    assert httpx.post(cluster.worker_url + cluster.predict, json=body, timeout=30).is_success

    # The alias moves in the registry: both nodes' replicas swap to the new version.
    uri = cluster.settings.mlflow_tracking_uri
    MlflowClient(uri, registry_uri=uri).set_registered_model_alias(
        cluster.settings.model_name, CHAMPION, second
    )
    moved = time.monotonic()
    swapped: dict[str, float] = {}
    with httpx.Client(base_url=cluster.url, timeout=30) as client:
        while len(swapped) < 2:
            assert time.monotonic() - moved < SWAP_WITHIN_S, f"swapped only on {swapped}"
            answer = client.post(cluster.predict, json=body)
            if answer.headers["X-Model-Version"] == second:
                swapped.setdefault(cluster.node_of(answer), time.monotonic() - moved)
            time.sleep(0.02)

    # The worker node dies under load: the head's replica keeps answering.
    load = Load(cluster)
    threads = [threading.Thread(target=load.run) for _ in range(LOAD_THREADS)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(BEFORE_KILL_S)
        killed_at = time.monotonic()
        killed = cluster.command("kill")["killed"]
        time.sleep(AFTER_KILL_S)
    finally:
        load.done.set()
        for thread in threads:
            thread.join()
    before = Counter(node for t, node in load.answered if t < killed_at)
    after = Counter(node for t, node in load.answered if t >= killed_at + 1)
    last = [node for t, node in load.answered if t >= killed_at + AFTER_KILL_S / 2]
    failures = Counter(kind for _, kind in load.failed)
    print(
        f"\nanswers per node {dict(per_node)}; swap seen after (s) "
        f"{ {n: round(s, 2) for n, s in swapped.items()} }; killed {killed} worker processes: "
        f"{len(load.failed)} failed of {len(load.failed) + len(load.answered)} requests "
        f"{dict(failures)}, answers before {dict(before)}, from 1 s after {dict(after)}"
    )
    assert set(before) == {"head", "worker"}, before
    assert last and set(last) == {"head"}, after
    assert not [t for t, _ in load.failed if t >= killed_at + AFTER_KILL_S / 2], failures
