"""Benchmark: alias move to the first answer from the new version, webhook against poll.

A real `mlflow server` on SQLite (webhooks on), two registered versions, the real
application with two replicas on 127.0.0.1; a client thread predicts back to back while
`Registry.promote` moves `@champion` between the versions, `--moves` times with a random
pause between moves (so the poll's phase is random). As after a canary, the version being
promoted is `@challenger` first and every replica has loaded it (no traffic: weight 0);
`--cold` skips that, so each move also pays a download and load. Measured from
the call to `promote()` (which writes `@previous`, then `@champion`, through the server):
the first answer from the new version (any replica) and the first of 20 answers in a row
from it (every replica swapped). Each mode runs in a process of its own (its own MLflow
server, Ray and home):

- `webhook`: `DRIFTLOOP_REGISTRY_WEBHOOK_SECRET` set, replicas poll every 30 s, so a swap
  within seconds is the webhook's;
- `poll`: no webhook, replicas poll every `DRIFTLOOP_SERVE_POLL_INTERVAL_S` (1 s).

    .venv/bin/python scripts/bench_registry_events.py --moves 20 --json bench-registry-events.json
    .venv/bin/python scripts/bench_registry_events.py --moves 20 --cold --json bench-….json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from driftloop.client import Client
from driftloop.registry import CHALLENGER, Registry
from driftloop.settings import load_settings
from serving import launch
from serving.app import ServeArgs
from tests.registry_stack import mlflow_server, two_regressors
from tests.serving.conftest import diabetes_table

MODES = {"webhook": 30.0, "poll": None}  # the replicas' poll interval (None: the default)
SECRET = "bench-registry-webhook-secret-0123456789"
ALL_REPLICAS = 20  # answers in a row from the new version: every replica has swapped


class Answers:
    """Predictions back to back on a thread: when each answer arrived, from which version."""

    def __init__(self, url: str) -> None:
        self.seen: list[tuple[float, str]] = []
        self.stop = threading.Event()
        self.rows = diabetes_table().drop(columns="target").head(1)
        self.thread = threading.Thread(target=self._run, args=(url,), daemon=True)
        self.thread.start()

    def _run(self, url: str) -> None:
        with Client(url) as client:
            while not self.stop.is_set():
                version = client.predict(self.rows)["model_version"].iloc[0]
                self.seen.append((time.perf_counter(), version))

    def after(self, since: float, version: str, timeout_s: float = 120) -> tuple[float, float]:
        """Seconds from `since` to the first answer from `version`, and to the first of
        ALL_REPLICAS in a row from it."""
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline:
            later = [(t, v) for t, v in list(self.seen) if t > since]
            hits = [i for i, (_, v) in enumerate(later) if v == version]
            if hits:
                first = later[hits[0]][0] - since
                run = 0
                for t, v in later:
                    run = run + 1 if v == version else 0
                    if run == ALL_REPLICAS:
                        return first, t - since
            time.sleep(0.01)
        raise TimeoutError(f"v{version} never answered within {timeout_s} s")


def _wait_loaded(url: str, version: str, timeout_s: float = 60) -> None:
    """Until 20 readiness answers in a row (any replica) hold `version` as @challenger."""
    deadline, streak = time.monotonic() + timeout_s, 0
    with Client(url) as client:
        while streak < ALL_REPLICAS:
            assert time.monotonic() < deadline, f"v{version} never loaded as @challenger"
            challenger = client.status().get("challenger") or {}
            streak = streak + 1 if challenger.get("version") == version else 0
            time.sleep(0.01)


def run_mode(mode: str, moves: int, replicas: int, cold: bool) -> dict:
    root = Path(tempfile.mkdtemp(prefix=f"driftloop-bench-events-{mode}-"))
    with mlflow_server(root / "mlflow", launch.free_port()) as tracking_uri:
        os.environ.pop("DAGSTER_HOME", None)
        os.environ.update(
            DRIFTLOOP_HOME=str(root / "home"),
            DRIFTLOOP_TRACKING_URI=tracking_uri,
            DRIFTLOOP_SERVE_PORT=str(launch.free_port()),
        )
        if mode == "webhook":
            os.environ["DRIFTLOOP_REGISTRY_WEBHOOK_SECRET"] = SECRET
        settings = load_settings()
        versions = two_regressors(settings)
        registry = Registry(settings.mlflow_tracking_uri, settings.model_name)
        args = ServeArgs(
            home=str(settings.home),
            num_replicas=replicas,
            replica_cpus=0.5,
            poll_interval_s=MODES[mode],
        )
        try:
            url = launch.start(settings, args, num_cpus=2)
            answers = Answers(url)
            first, everyone, promote = [], [], []
            for move in range(moves):
                target = versions[(move + 1) % 2]
                if not cold:
                    registry.set_alias(CHALLENGER, target)
                    _wait_loaded(url, target)
                time.sleep(random.uniform(0.5, 1.5))
                started = time.perf_counter()
                registry.promote(target)
                promote.append(time.perf_counter() - started)
                any_replica, all_replicas = answers.after(started, target)
                first.append(any_replica)
                everyone.append(all_replicas)
            answers.stop.set()
        finally:
            launch.stop(settings)
    return {
        "mode": mode,
        "poll_interval_s": MODES[mode] or settings.serve_poll_interval_s,
        "replicas": replicas,
        "moves": moves,
        "challenger_loaded_before": not cold,
        "first_answer_s": first,
        "all_replicas_s": everyone,
        "promote_call_s": promote,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--moves", type=int, default=20)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--cold", action="store_true", help="no @challenger loaded first")
    parser.add_argument("--json", type=Path, default=Path("bench-registry-events.json"))
    parser.add_argument("--mode", choices=sorted(MODES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:  # one mode, in a process of its own
        result = run_mode(args.mode, args.moves, args.replicas, args.cold)
        args.json.write_text(json.dumps(result))
        return
    results = []
    for mode in MODES:
        out = Path(tempfile.mkdtemp()) / f"{mode}.json"
        command = [sys.executable, __file__, "--mode", mode, "--json", str(out)]
        command += ["--moves", str(args.moves), "--replicas", str(args.replicas)]
        command += ["--cold"] if args.cold else []
        subprocess.run(command, check=True)
        results.append(json.loads(out.read_text()))

    def ms(values: list[float], q: float = 0.5) -> float:
        return round(statistics.quantiles(values, n=100)[int(q * 100) - 1] * 1000, 1)

    print(f"\n{'mode':<9}{'poll s':>8}{'first p50':>11}{'first p90':>11}"
          f"{'all p50':>9}{'all p90':>9}{'promote p50':>13}  (ms, from promote())")  # fmt: skip
    for r in results:
        first, everyone = r["first_answer_s"], r["all_replicas_s"]
        print(
            f"{r['mode']:<9}{r['poll_interval_s']:>8}{ms(first):>11}{ms(first, 0.9):>11}"
            f"{ms(everyone):>9}{ms(everyone, 0.9):>9}{ms(r['promote_call_s']):>13}"
        )
    report = {
        "results": results,
        "machine": f"{platform.node()} {os.cpu_count()} cores {platform.python_version()}",
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
    }
    args.json.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
