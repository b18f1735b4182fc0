"""Scale-out numbers on this machine, against the same throwaway stack the integration tests use.

1. Parallel HPO: trials per minute of 1 worker versus 2 workers adding trials to one Optuna
   study on PostgreSQL (each worker pinned to one thread, real driftloop trials).
2. Pipeline wall time: ingest + training job on the embedded default (SQLite, local files)
   versus the scale-out stores (landing zone in S3, Dagster on PostgreSQL, S3 asset values
   and compute logs, MLflow server on PostgreSQL + S3, Optuna on PostgreSQL).

    .venv/bin/python scripts/bench_scaleout.py --trials 8 --out bench-scaleout.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the stack helpers live with the tests that check them

from driftloop.hpo import open_study  # noqa: E402
from driftloop.settings import Settings, load_settings  # noqa: E402
from tests.conftest import land, train  # noqa: E402
from tests.deploy.stack import (  # noqa: E402
    BUCKET,
    Stack,
    scaleout_stack,
    start_trial_workers,
    write_instance_yaml,
)


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Set variables for one measurement and restore the previous ones after it."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def parallel_hpo(stack: Stack, total_trials: int, folds: int, rows: int) -> dict[str, object]:
    """The same number of trials by one worker, then split across two, on fresh studies."""
    env = {**stack.env(), "DRIFTLOOP_CV_FOLDS": str(folds)}
    results: dict[str, object] = {}
    for workers in (1, 2):
        study = f"bench-{workers}w-{time.time_ns()}"
        started = time.perf_counter()
        processes = start_trial_workers(study, total_trials // workers, workers, env, rows)
        for process in processes:
            process.communicate(timeout=1800)
            if process.returncode:
                raise RuntimeError(f"trial worker failed with exit code {process.returncode}")
        seconds = time.perf_counter() - started
        with environment(env):
            trials = open_study(load_settings(), study).get_trials(deepcopy=False)
        # Throughput over the trials themselves: from the first start to the last finish,
        # so the workers' interpreter start-up (the same for 1 or 2) does not dilute it.
        window = max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)
        distinct = {json.dumps(t.params, sort_keys=True) for t in trials}
        results[f"{workers}_worker"] = {
            "trials": len(trials),
            "distinct_param_sets": len(distinct),
            "wall_seconds_with_startup": round(seconds, 1),
            "trial_seconds": round(window.total_seconds(), 1),
            "trials_per_minute": round(60 * len(trials) / window.total_seconds(), 1),
        }
    one, two = results["1_worker"], results["2_worker"]
    results["speedup"] = round(two["trials_per_minute"] / one["trials_per_minute"], 2)
    return results


def pipeline_seconds(env: dict[str, str], rows: int) -> float:
    """Land `rows` rows and time ingest + training on the instance `env` configures."""
    with environment(env):
        settings: Settings = load_settings()
        land(settings, rows=rows, batch_rows=rows // 2)
        started = time.perf_counter()
        result = train(settings, trigger="bench")
        seconds = time.perf_counter() - started
    if not result.success:
        raise RuntimeError("the training run failed; see the log above")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8, help="Optuna trials per pipeline run")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=4000, help="rows landed per pipeline run")
    parser.add_argument("--hpo-trials", type=int, default=16, help="trials per HPO measurement")
    parser.add_argument("--hpo-rows", type=int, default=20000, help="rows the HPO workers fit on")
    parser.add_argument("--out", type=Path, help="also write the numbers here as JSON")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-scaleout-") as tmp:
        work = Path(tmp)
        common = {"DRIFTLOOP_N_TRIALS": str(args.trials), "DRIFTLOOP_CV_FOLDS": str(args.folds)}
        embedded = pipeline_seconds(
            {**common, "DRIFTLOOP_HOME": str(work / "embedded"), "DAGSTER_HOME": ""}, args.rows
        )
        with scaleout_stack(work) as stack:
            write_instance_yaml(work / "dagster")
            scaleout = pipeline_seconds(
                {
                    **stack.env(),
                    **common,
                    "DRIFTLOOP_HOME": str(work / "scaleout"),
                    "DAGSTER_HOME": str(work / "dagster"),
                    "DRIFTLOOP_LANDING_DIR": f"s3://{BUCKET}/landing",
                },
                args.rows,
            )
            hpo = parallel_hpo(stack, args.hpo_trials, args.folds, args.hpo_rows)

    report = {
        "machine_cpus": os.cpu_count(),
        # Other work on the machine skews every number here; this says how much there was.
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        "cv_folds": args.folds,
        "parallel_hpo": {"trials": args.hpo_trials, "rows": args.hpo_rows, **hpo},
        "pipeline_seconds": {
            "trials": args.trials,
            "rows": args.rows,
            "embedded": round(embedded, 1),
            "postgres_s3": round(scaleout, 1),
            "ratio": round(scaleout / embedded, 2),
        },
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
