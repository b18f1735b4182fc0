"""Benchmark: what the slice and fairness review adds to the promotion gate.

Trains two real versions on simulated loans in a fresh home (the real CLI path: ingest,
then the Dagster training job, twice), then runs the gate's own work for the second
version against the first on the second run's holdout, with and without the review,
alternating, and reports the medians. "Without" is what the gate did before the review:
load both versions (digest checked) and score them on the holdout and the newest batch,
then decide. The review adds `slice_review` (both models' outputs on the holdout, the
metric per slice level, fairlearn's disparities for the sensitive columns), `with_review`,
the review's tags on the version and its model-card section.

    .venv/bin/python scripts/bench_review.py --repeats 9 --json bench-review.json
"""

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import dagster as dg

from driftloop.metrics import metric_named
from driftloop.promotion import decide, floor_of, with_review
from driftloop.registry import CHAMPION, PREVIOUS, Registry
from driftloop.settings import load_settings
from driftloop.simulate import LoanStream, write_batches
from driftloop.training import TRUSTED_TYPES, evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000, help="rows per training")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--sensitive", default="elevel,zipcode")
    parser.add_argument("--json", type=Path, default=Path("bench-review.json"))
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="driftloop-bench-review-")) / "home"
    os.environ.update(
        DRIFTLOOP_HOME=str(home),
        DRIFTLOOP_N_TRIALS=str(args.trials),
        DRIFTLOOP_CV_FOLDS="2",
        DRIFTLOOP_SENSITIVE_COLUMNS=args.sensitive,
    )
    os.environ.pop("DAGSTER_HOME", None)
    settings = load_settings()

    from assets.registry import slice_review
    from pipelines.launch import ingest_pending, prepare_dagster_home, run_training

    prepare_dagster_home(settings)
    with dg.DagsterInstance.get() as instance:
        for seed in (7, 11):
            write_batches(
                LoanStream(seed=seed), args.rows, args.rows // 2, settings.landing, "label"
            )
            ingest_pending(settings, instance, print)
            result = run_training(settings, instance, trigger="benchmark")
            assert result.success, "training run failed"
    training = result.output_for_node("training_dataset")
    challenger = result.output_for_node("candidate_model").version.version
    registry = Registry(settings.mlflow_tracking_uri, settings.model_name)
    aliases = registry.record().aliases
    # The version the second run was judged against: still champion, or now @previous.
    champion = aliases[PREVIOUS] if aliases.get(CHAMPION) == challenger else aliases[CHAMPION]
    metric = metric_named(training.schema.metric)
    holdout, recent = training.xy(training.holdout), training.xy(training.recent)

    def gate(review: bool) -> float:
        started = time.perf_counter()
        models, scores = {}, {}
        for version in (challenger, champion):
            models[version] = registry.load_verified(version, TRUSTED_TYPES)
            scores[version] = (
                evaluate(models[version], *holdout, metric.name),
                evaluate(models[version], *recent, metric.name),
            )
        decision = decide(
            challenger,
            scores[challenger],
            champion,
            scores[champion],
            settings.promotion_margin,
            floor_of(metric, settings.promotion_floor),
        )
        if review:
            reviewing = time.perf_counter()
            judged = slice_review(training, models[challenger], models[champion], settings, metric)
            decision = with_review(decision, judged, settings.promotion_policy)
            judged.markdown()
            tagging = time.perf_counter()
            registry.set_tags(challenger, judged.as_tags())  # one registry write per tag
            parts.append((tagging - reviewing, time.perf_counter() - tagging))
        return time.perf_counter() - started

    parts: list[tuple[float, float]] = []  # per reviewed gate: (review itself, its tags)

    gate(True)  # warm: imports, the artifact cache of the file system
    off, on = [], []
    for _ in range(args.repeats):
        off.append(gate(False))
        on.append(gate(True))
    loaded = [registry.load_verified(v, TRUSTED_TYPES) for v in (challenger, champion)]
    judged = slice_review(training, *loaded, settings, metric)
    report = {
        "holdout_rows": len(holdout[0]),
        "slice_columns": sorted({g.column for g in judged.slices}),
        "slices_judged": len(judged.slices),
        "sensitive_columns": list(settings.sensitive_columns),
        "disparities": len(judged.disparities),
        "repeats": args.repeats,
        "gate_without_review_ms": round(statistics.median(off) * 1000, 1),
        "gate_with_review_ms": round(statistics.median(on) * 1000, 1),
        "review_adds_ms": round((statistics.median(on) - statistics.median(off)) * 1000, 1),
        "of_which_slices_and_disparities_ms": round(
            statistics.median(p[0] for p in parts) * 1000, 1
        ),
        "of_which_review_tags_ms": round(statistics.median(p[1] for p in parts) * 1000, 1),
        "machine": f"{platform.node()} {os.cpu_count()} cores {platform.python_version()}",
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
    }
    print(f"\n{'measure':<26}{'value':>16}")
    for key, value in report.items():
        print(f"{key:<26}{value!s:>16}")
    args.json.write_text(json.dumps({**report, "off_s": off, "on_s": on}, indent=2))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
