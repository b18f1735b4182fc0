"""Benchmark: simulated rows → registered champion, on a fresh temporary home.

Runs the real CLI path (simulate, then ingest + the training job on a Dagster instance)
and reports where the time goes, per Dagster step, from the run's own step events.

    .venv/bin/python scripts/bench_training.py --rows 20000 --trials 50 --json bench-training.json
"""

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import dagster as dg

from driftloop.settings import load_settings
from driftloop.simulate import LoanStream, write_batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--batch-rows", type=int, default=5_000)
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--json", type=Path, default=Path("bench-training.json"))
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="driftloop-bench-")) / "home"
    os.environ.update(
        DRIFTLOOP_HOME=str(home),
        DRIFTLOOP_N_TRIALS=str(args.trials),
        DRIFTLOOP_CV_FOLDS=str(args.folds),
    )
    os.environ.pop("DAGSTER_HOME", None)
    settings = load_settings()

    from pipelines.launch import ingest_pending, prepare_dagster_home, run_training

    started = time.perf_counter()
    write_batches(
        LoanStream(), args.rows, args.batch_rows, settings.landing, settings.target_column
    )
    simulated = time.perf_counter()
    prepare_dagster_home(settings)
    with dg.DagsterInstance.get() as instance:
        ingest_pending(settings, instance, print)
        ingested = time.perf_counter()
        result = run_training(settings, instance, trigger="benchmark")
        finished = time.perf_counter()
        steps = _step_seconds(instance, result.run_id)
    assert result.success, "training run failed"
    search = result.output_for_node("hpo_study")
    candidate = result.output_for_node("candidate_model")
    gate = result.output_for_node("promotion_gate")
    report = {
        "rows": args.rows,
        "trials": args.trials,
        "folds": args.folds,
        "total_s": round(finished - started, 2),
        "simulate_s": round(simulated - started, 2),
        "ingest_s": round(ingested - simulated, 2),
        "training_run_s": round(finished - ingested, 2),
        "steps_s": steps,
        "search_s": round(search.seconds, 2),
        "trials_per_minute": round(search.trials_per_minute, 1),
        "trials_complete": search.complete,
        "trials_pruned": search.pruned,
        "metric": search.metric,
        "best_cv_score": round(search.best_cv_score, 4),
        "holdout_accuracy": round(candidate.holdout.scores["accuracy"], 4),
        "holdout_score": candidate.holdout.value,
        "champion_version": gate.challenger_version if gate.applied else None,
        "machine": f"{platform.node()} {os.cpu_count()} cores {platform.python_version()}",
        # The machine is shared: a busy one makes every number here slower, not wrong.
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
    }
    print()
    print(f"{'measure':<24}{'value':>12}")
    for key, value in report.items():
        if key == "steps_s":
            for step, seconds in value.items():
                print(f"  step {step:<19}{seconds:>12}")
        else:
            print(f"{key:<24}{value!s:>12}")
    args.json.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.json}")


def _step_seconds(instance: dg.DagsterInstance, run_id: str) -> dict[str, float]:
    """Step durations from the run's STEP_START/STEP_SUCCESS events."""
    starts: dict[str, float] = {}
    durations: dict[str, float] = {}
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is None or event.step_key is None:
            continue
        if event.event_type_value == "STEP_START":
            starts[event.step_key] = record.timestamp
        elif event.event_type_value == "STEP_SUCCESS":
            durations[event.step_key] = round(record.timestamp - starts[event.step_key], 2)
    return durations


if __name__ == "__main__":
    main()
