"""Benchmark: requests/s per replica core, the figure a capacity projection divides by.

One replica (`replica_cpus=1`) of a trained home's @champion behind HAProxy on 127.0.0.1,
every thread of the replica process pinned to core 0 and wrk to core 1, so the client's
cost is not charged to the replica. Per --concurrency, --rounds wrk runs of one
single-instance request; each row also carries the replica's and HAProxy's CPU per request
(from psutil around the run), which the machine's other load disturbs less than req/s.

    .venv/bin/python scripts/bench_per_core.py --home HOME --seconds 8 --rounds 2 \
        --concurrency 1,2,4,8,16 --json bench-per-core.json
"""

import argparse
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import psutil

from bench.serve import Load, champion_payload, run_wrk
from driftloop.registry import Registry
from driftloop.settings import load_settings
from serving import launch
from serving.app import ServeArgs

REPLICA_CORE, CLIENT_CORE = "0", "1"


def wrk(url: str, body: dict[str, Any], concurrency: int, seconds: float) -> Load:
    """One wrk run on the client core (one thread: a second would share that core)."""
    script = f"wrk.body = [==[{json.dumps(body)}]==]\n"
    return run_wrk(url, script, concurrency, seconds, core=CLIENT_CORE)


def replica_of(home: str) -> psutil.Process:
    """This home's replica: Serve replicas of other people's Ray may run beside it."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if "ServeReplica" in " ".join(process.info["cmdline"] or []) and (
                process.environ().get("DRIFTLOOP_HOME") == home
            ):
                found.append(process)
        except psutil.Error:
            continue
    assert len(found) == 1, f"expected one replica of {home}, found {len(found)}"
    return found[0]


def pin(process: psutil.Process, core: str) -> None:
    """Every thread of `process` (the event loop runs in one Ray started) onto `core`."""
    for thread in process.threads():
        subprocess.run(["taskset", "-pc", core, str(thread.id)], capture_output=True)


def cpu_s(processes: list[psutil.Process]) -> list[float]:
    return [sum(p.cpu_times()[:2]) for p in processes]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", required=True, help="a home with a registered @champion")
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", default="1,4,16", help="comma-separated wrk -c values")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    home = str(Path(args.home).resolve())
    os.environ.pop("DAGSTER_HOME", None)
    os.environ["DRIFTLOOP_HOME"] = home
    os.environ["DRIFTLOOP_SERVE_PORT"] = str(launch.free_port())
    settings = load_settings()
    registry = Registry(settings.mlflow_tracking_uri, settings.model_name)
    body = {"instances": [champion_payload(registry, settings.home / "bench" / "model")]}
    url = launch.start(settings, ServeArgs(home=home, num_replicas=1), num_cpus=2)
    rows = []
    try:
        replica = replica_of(home)
        pin(replica, REPLICA_CORE)
        path = f"{url}/v1/models/{settings.model_name}:predict"
        wrk(path, body, 16, 3)  # warm-up
        for _ in range(args.rounds):  # rounds outermost: the machine's drift hits every c
            for concurrency in (int(c) for c in args.concurrency.split(",")):
                measured = [replica] + [
                    psutil.Process(int(p)) for p in launch.haproxy_pids(settings)
                ]
                before = cpu_s(measured)
                load = wrk(path, body, concurrency, args.seconds)
                used = [after - b for after, b in zip(cpu_s(measured), before, strict=True)]
                requests = max(load.rps * args.seconds, 1)
                row = {
                    "c": concurrency,
                    "rps": load.rps,
                    "p50_ms": load.p50_ms,
                    "p99_ms": load.p99_ms,
                    "errors": load.errors,
                    "replica_cpu_us_per_request": round(used[0] / requests * 1e6),
                    "replica_cores": round(used[0] / args.seconds, 2),
                    "haproxy_cpu_us_per_request": round(sum(used[1:]) / requests * 1e6),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        launch.stop(settings)
    args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
