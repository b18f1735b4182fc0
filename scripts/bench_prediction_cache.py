"""Benchmark: the prediction cache on a workload with repeated instances, off against on.

One serving application on 127.0.0.1 (one replica unless --replicas), redeployed with the
cache off and on, alternating for --rounds, driven each time by wrk (one thread, fixed
concurrency, keep-alive) through the same sequence of single-instance requests: a share
--repeat-share of them drawn from --hot instances seen over and over, the rest each an
instance never sent before. Both modes get the same warm-up first (the hot instances are
cached when the measurement starts, as in a steady state). Hits and misses are read from
the replica's /metrics. Beside it, in this process: the champion's call for one instance
against a cache hit (what a hit saves the replica). Without --home it trains a fresh home
(simulated loans, the real ingest and Dagster training); with one, it serves that home's
@champion and moves no alias.

    .venv/bin/python scripts/bench_prediction_cache.py --seconds 10 --rounds 2 \
        --json bench-prediction-cache.json
"""

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
from ray import serve

from bench.serve import Load, run_wrk
from driftloop.registry import CHAMPION, Registry
from driftloop.settings import Settings, load_settings
from driftloop.simulate import LoanStream, write_batches
from serving import launch
from serving.app import ServeArgs, build_app
from serving.cache import PredictionCache
from serving.launch import APP_NAME
from serving.model import ModelStore
from serving.schemas import build_request_models


def fresh_home(rows: int) -> Settings:
    """A home of its own with one trained, promoted version (as the tests train)."""
    home = Path(tempfile.mkdtemp(prefix="driftloop-bench-cache-")) / "home"
    os.environ.update(DRIFTLOOP_HOME=str(home), DRIFTLOOP_N_TRIALS="4", DRIFTLOOP_CV_FOLDS="2")
    os.environ.pop("DAGSTER_HOME", None)
    settings = load_settings()
    import dagster as dg

    from pipelines.launch import ingest_pending, prepare_dagster_home, run_training

    write_batches(LoanStream(seed=7), rows, rows, settings.landing, settings.target_column)
    prepare_dagster_home(settings)
    with dg.DagsterInstance.get() as instance:
        ingest_pending(settings, instance, lambda _: None)
        assert run_training(settings, instance, "bench").success, "training failed"
    return settings


def workload(requests: int, share: float, hot: list[dict], seed: int, per: int) -> list[str]:
    """Request bodies of `per` instances, each one of the `hot` instances with probability
    `share`, else a new one from the stream of `seed` (each call its own: none shared)."""
    stream, rng = LoanStream(seed=seed), random.Random(seed)

    def one() -> dict:
        return rng.choice(hot) if rng.random() < share else next(stream)[0]

    return [json.dumps({"instances": [one() for _ in range(per)]}) for _ in range(requests)]


def wrk(url: str, bodies: list[str], concurrency: int, seconds: float) -> Load:
    """One wrk run sending `bodies` in order (one thread: one Lua state, one sequence)."""
    script = (
        "local bodies = {\n"
        + "".join(f"[==[{body}]==],\n" for body in bodies)
        + "}\nlocal i = 0\n"
        + "request = function()\n  i = i % #bodies + 1\n"
        + "  return wrk.format(nil, nil, nil, bodies[i])\nend\n"
    )
    return run_wrk(url, script, concurrency, seconds)


def in_process(settings: Settings, calls: int = 2000) -> dict[str, Any]:
    """What a hit saves inside the replica: the champion's call for one validated instance
    against a cache lookup that finds it (median µs, both on this process's one thread)."""
    registry = Registry(settings.mlflow_tracking_uri, settings.model_name)
    info = registry.by_alias(CHAMPION)
    assert info is not None, "the home has no @champion"
    model = ModelStore(registry, Path(tempfile.mkdtemp())).load(CHAMPION, info)
    validate = build_request_models(model.features, 1).instance.model_validate
    rows = [validate(next(LoanStream(seed=3))[0]).__dict__]
    cache = PredictionCache(model.features, 10, 60)
    labels, probabilities = model.predict_rows(rows)
    found = cache.lookup(model.version, rows)
    cache.fill(found, labels, probabilities.tolist(), model.unseen(rows))

    def median_us(call: Any) -> float:
        times = []
        for _ in range(calls):
            started = time.perf_counter()
            call()
            times.append(time.perf_counter() - started)
        return round(statistics.median(times) * 1e6, 1)

    return {
        "model_call_us": median_us(lambda: (model.predict_rows(rows), model.unseen(rows))),
        "cache_hit_us": median_us(lambda: cache.lookup(model.version, rows).columns()),
        "path": "compiled" if model.compiled is not None else "pandas",
    }


def cache_counts(url: str) -> dict[str, float]:
    counts = {"hit": 0.0, "miss": 0.0}
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        for outcome in counts:
            if line.startswith(f'driftloop_prediction_cache_total{{outcome="{outcome}"}}'):
                counts[outcome] += float(line.rsplit(" ", 1)[1])
    return counts


def measure(
    settings: Settings, url: str, size: int, args: argparse.Namespace, seed: int
) -> dict[str, Any]:
    """Redeploy with cache `size` (0: off), warm up, then one measured wrk run."""
    serve_args = ServeArgs(
        home=str(settings.home),
        num_replicas=args.replicas,
        prediction_cache_size=size,
        prediction_cache_ttl_s=args.ttl,
    )
    serve.run(build_app(serve_args), name=APP_NAME, route_prefix="/")
    path = url + f"/v1/models/{settings.model_name}:predict"
    hot = [next(stream)[0] for stream in [LoanStream(seed=1)] for _ in range(args.hot)]
    per = args.instances
    bodies = workload(int(args.seconds * args.max_rps), args.repeat_share, hot, seed, per)
    warm = workload(int(2 * args.max_rps), args.repeat_share, hot, seed + 1, per)
    wrk(path, warm, args.concurrency, 2)
    before = cache_counts(url)
    result = wrk(path, bodies, args.concurrency, args.seconds)
    after = cache_counts(url)
    hits, misses = (after[k] - before[k] for k in ("hit", "miss"))
    looked_up = hits + misses
    return {
        **asdict(result),
        "predictions_per_s": round(result.rps * per, 1),
        "cache_size": size,
        "hit_rate": round(hits / looked_up, 3) if looked_up else None,
        "wrapped": result.requests > len(bodies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, help="serve this home's @champion")
    parser.add_argument("--rows", type=int, default=3000, help="rows to train a fresh home on")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=2, help="off/on pairs, alternating")
    parser.add_argument("--repeat-share", type=float, default=0.5)
    parser.add_argument("--hot", type=int, default=100, help="distinct repeated instances")
    parser.add_argument("--cache-size", type=int, default=10_000)
    parser.add_argument("--ttl", type=float, default=60)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--instances", type=int, default=1, help="instances per request")
    parser.add_argument("--max-rps", type=float, default=4000, help="sizes the workload")
    parser.add_argument("--json", type=Path, default=Path("bench-prediction-cache.json"))
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed (apt-get install wrk)")

    os.environ.setdefault("DRIFTLOOP_SERVE_PORT", str(launch.free_port()))
    if args.home is not None:
        os.environ["DRIFTLOOP_HOME"] = str(args.home)
        settings = load_settings()
    else:
        settings = fresh_home(args.rows)
    inside = in_process(settings)
    print("in process:", inside, flush=True)
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    url = launch.start(settings, ServeArgs(home=str(settings.home), num_replicas=args.replicas))
    try:
        for round_ in range(args.rounds):
            for mode, size in (("off", 0), ("on", args.cache_size)):
                seed = 1000 * round_ + 10 * (size > 0) + 2  # new instances never repeat
                runs[mode].append(measure(settings, url, size, args, seed))
                print(mode, runs[mode][-1], flush=True)
    finally:
        launch.stop(settings)

    summary = {
        mode: {
            "rps": statistics.median(r["rps"] for r in results),
            "predictions_per_s": statistics.median(r["predictions_per_s"] for r in results),
            "p50_ms": statistics.median(r["p50_ms"] for r in results),
            "p99_ms": statistics.median(r["p99_ms"] for r in results),
            "hit_rate": results[-1]["hit_rate"],
            "errors": sum(r["errors"] for r in results),
        }
        for mode, results in runs.items()
    }
    heads = ("rps", "pred/s", "p50 ms", "p99 ms", "hit rate", "errors")
    print(f"\n{'cache':<6}" + "".join(f"{h:>10}" for h in heads))
    for mode, row in summary.items():
        rate = "-" if row["hit_rate"] is None else f"{row['hit_rate']:.2f}"
        print(
            f"{mode:<6}{row['rps']:>10.0f}{row['predictions_per_s']:>10.0f}"
            f"{row['p50_ms']:>10.2f}{row['p99_ms']:>10.2f}{rate:>10}{row['errors']:>10}"
        )
    speedup = summary["on"]["rps"] / summary["off"]["rps"]
    print(f"on/off requests/s: {speedup:.2f}x (median of {args.rounds} rounds each)")
    print(
        f"in the replica, per instance: model call {inside['model_call_us']} µs "
        f"({inside['path']} path), cache hit {inside['cache_hit_us']} µs"
    )
    args.json.write_text(
        json.dumps(
            {
                "summary": summary,
                "runs": runs,
                "speedup": round(speedup, 2),
                "in_process": inside,
                "workload": {
                    "repeat_share": args.repeat_share,
                    "hot": args.hot,
                    "seconds": args.seconds,
                    "concurrency": args.concurrency,
                    "replicas": args.replicas,
                    "instances_per_request": args.instances,
                    "cache_size": args.cache_size,
                    "ttl_s": args.ttl,
                },
                "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
                "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
