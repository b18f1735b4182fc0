"""Benchmark: real tables shipped in scikit-learn and river, trained by configuration alone.

For each table: a fresh home, one CSV into the landing zone, ingest + the training job on a
Dagster instance; then the champion's holdout score against a plain scikit-learn model
(HistGradientBoosting at its defaults, classifier or regressor) fitted on the same
train/holdout split. Regression tables also report MAE beside the primary RMSE.

    .venv/bin/python scripts/bench_realdata.py --trials 20 --json bench-realdata.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' dataset builders

from driftloop.metrics import metric_named
from driftloop.registry import CHAMPION, Registry
from driftloop.schema import load_schema
from driftloop.settings import load_settings
from driftloop.training import TRUSTED_TYPES
from tests.datasets import (
    breast_cancer,
    diabetes,
    friedman,
    imbalanced,
    phishing,
    plain_output,
    trump_approval,
    wine,
    with_gaps,
    with_roles,
)

GAPS = ["mean_radius", "mean_texture", "worst_area", "worst_smoothness"]

TABLES: dict[str, tuple[Callable[[], pd.DataFrame], dict[str, str]]] = {
    "breast_cancer": (breast_cancer, {}),
    "breast_cancer_gaps_roles": (
        lambda: with_roles(with_gaps(breast_cancer(), GAPS, 0.15, seed=1), seed=2),
        {"DRIFTLOOP_ID_COLUMNS": "case_id", "DRIFTLOOP_TIMESTAMP_COLUMN": "seen_at"},
    ),
    "breast_cancer_imbalanced_roc_auc": (
        lambda: imbalanced(breast_cancer(), "malignant", 0.08, seed=3),
        {"DRIFTLOOP_METRIC": "roc_auc"},
    ),
    "wine": (wine, {}),
    "wine_gaps": (lambda: with_gaps(wine(), ["alcohol", "magnesium", "hue"], 0.2, seed=4), {}),
    "phishing": (phishing, {}),
    "diabetes": (diabetes, {}),
    "trump_approval": (trump_approval, {}),
    "friedman_20k_text_gaps": (lambda: friedman(20_000, seed=3), {}),
}


def run_table(name: str, trials: int, folds: int) -> dict[str, object]:
    build, env = TABLES[name]
    home = Path(tempfile.mkdtemp(prefix=f"driftloop-{name}-")) / "home"
    saved = dict(os.environ)
    os.environ.update(
        DRIFTLOOP_HOME=str(home),
        DRIFTLOOP_N_TRIALS=str(trials),
        DRIFTLOOP_CV_FOLDS=str(folds),
        DRIFTLOOP_MIN_ROWS="100",
        **env,
    )
    os.environ.pop("DAGSTER_HOME", None)
    try:
        settings = load_settings()
        frame = build()
        settings.landing.write_bytes(f"{name}.csv", frame.to_csv(index=False).encode())
        from pipelines.launch import ingest_pending, prepare_dagster_home, run_training

        prepare_dagster_home(settings)
        started = time.perf_counter()
        with dg.DagsterInstance.get() as instance:
            ingest_pending(settings, instance, lambda _: None)
            result = run_training(settings, instance, trigger="benchmark")
        seconds = time.perf_counter() - started
        assert result.success, f"{name}: training failed"
        schema = load_schema(settings.schema_path)
        assert schema is not None
        training = result.output_for_node("training_dataset")
        registry = Registry(settings.mlflow_tracking_uri, settings.model_name)
        champion = registry.by_alias(CHAMPION)
        assert champion is not None, f"{name}: no champion"
        model = registry.load_verified(champion.version, TRUSTED_TYPES)
        metric = metric_named(schema.metric)
        hx, hy = training.xy(training.holdout)
        ours = (
            (model.predict(hx), ())
            if schema.is_regression
            else (model.predict_proba(hx), model.classes_)
        )
        theirs = plain_output(*training.xy(training.train), hx, schema.task)
        second = metric_named("mae" if schema.is_regression else "accuracy")
        return {
            "rows": len(frame),
            "task": schema.task,
            "metric": schema.metric,
            "features_used": len(schema.features),
            "excluded": {c.name: c.role for c in schema.excluded},
            "holdout_rows": len(training.holdout),
            "holdout_score": metric.score(hy, *ours),
            "baseline_score": metric.score(hy, *theirs),
            f"holdout_{second.name}": second.score(hy, *ours),
            f"baseline_{second.name}": second.score(hy, *theirs),
            "family": result.output_for_node("hpo_study").best_params["family"],
            "train_s": round(seconds, 1),
        }
    finally:
        os.environ.clear()
        os.environ.update(saved)


def table(results: dict[str, dict[str, object]]) -> str:
    lines = [
        "| table | rows | task | metric | features used / excluded | holdout | baseline | "
        "second metric: holdout / baseline | model | train s |",
        "|---|---:|---|---|---|---:|---:|---|---|---:|",
    ]
    for name, r in results.items():
        excluded = ", ".join(f"{k} ({v})" for k, v in r["excluded"].items()) or "none"
        second = "mae" if r["task"] == "regression" else "accuracy"
        lines.append(
            f"| {name} | {r['rows']} | {r['task']} | {r['metric']} | {r['features_used']} / "
            f"{excluded} | {r['holdout_score']:.4f} | {r['baseline_score']:.4f} | "
            f"{second} {r[f'holdout_{second}']:.4f} / {r[f'baseline_{second}']:.4f} | "
            f"{r['family']} | {r['train_s']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--only", nargs="*", choices=sorted(TABLES), help="a subset of tables")
    parser.add_argument("--json", type=Path, default=Path("bench-realdata.json"))
    args = parser.parse_args()
    results = {name: run_table(name, args.trials, args.folds) for name in args.only or TABLES}
    print(table(results))
    report = {
        "trials": args.trials,
        "folds": args.folds,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "tables": results,
    }
    args.json.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
