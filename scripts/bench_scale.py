"""Benchmark: how each stage of the loop grows with the rows, on fresh temporary homes.

For 10k, 100k and 1M rows (`--quick`: up to 100k) of the loan simulator and of a real
shipped table (scikit-learn's diabetes, 442 rows, resampled with jitter), it times ingest,
dataset versioning, the search, the refit + registration, the gate that makes the first
champion, the prediction-log read, and one drift and one live-quality monitor run over a
window of served rows (10k, or 100k from 100k rows on), and fits each stage's growth
exponent k (seconds ∝ rows^k, least squares on log-log).

Every stage runs in a child process of its own (`stage` below), timed around the real
function the Dagster asset calls (or the asset itself, invoked directly), so its peak
RSS is its own and not the largest of the stages before it. Stage outputs pass between
the children as pickles in the work folder, as Dagster's IO manager passes asset values.

    .venv/bin/python scripts/bench_scale.py [--quick] --json bench-scale.json
    .venv/bin/python scripts/bench_scale.py --compare 100000 --json bench-compare.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import platform
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

SIZES = (10_000, 100_000, 1_000_000)
QUICK_SIZES = SIZES[:2]
TRIALS = 30
LOG_FILE_ROWS = 25_000  # served rows per log file: one writer's 5-minute window under load
STAGES = ("simulate", "ingest", "version", "search", "refit", "gate", "serve", "read_log")
MONITORS = ("drift", "quality")
# Stages on the way to a registered champion (`champion_s` is their sum).
TO_CHAMPION = ("simulate", "ingest", "version", "search", "refit", "gate")
DATASETS = ("loans", "diabetes")


# --- in the child: one stage ------------------------------------------------------------


def _settings():
    from driftloop.settings import load_settings

    return load_settings()


def _load(work: Path, name: str) -> Any:
    with (work / f"{name}.pickle").open("rb") as file:
        return pickle.load(file)


def _save(work: Path, name: str, value: Any) -> None:
    with (work / f"{name}.pickle").open("wb") as file:
        pickle.dump(value, file, protocol=pickle.HIGHEST_PROTOCOL)


def diabetes_rows(rows: int, seed: int) -> pd.DataFrame:
    """scikit-learn's diabetes table resampled to `rows`: a smoothed bootstrap (each drawn
    row plus Gaussian noise of 5 % of its column's spread), so rows are distinct and
    survive the dataset's deduplication. Near-copies of one patient land on both sides of
    the holdout split: the holdout scores are optimistic; the timings are what counts."""
    from sklearn.datasets import load_diabetes

    frame = load_diabetes(as_frame=True).frame.rename(columns={"target": "label"})
    rng = np.random.default_rng(seed)
    drawn = frame.iloc[rng.integers(0, len(frame), rows)].reset_index(drop=True)
    noise = rng.normal(0.0, 1.0, drawn.shape) * (0.05 * frame.std().to_numpy())
    return drawn + noise


def _simulate(work: Path, dataset: str, rows: int) -> None:
    from driftloop.simulate import LoanStream, write_batches

    settings = _settings()
    batch = max(rows // 10, 1_000)
    if dataset == "loans":
        write_batches(LoanStream(seed=7), rows, batch, settings.landing, settings.target_column)
        return
    frame = diabetes_rows(rows, seed=7)
    for index, start in enumerate(range(0, rows, batch)):
        settings.landing.write_frame(f"diabetes-{index:04d}.parquet", frame[start : start + batch])


def _ingest(work: Path) -> dict[str, Any]:
    from driftloop.ingest import ingest, pending_files

    settings = _settings()
    keys, _ = pending_files(settings.landing, [], {}, settings.max_file_bytes)
    outcomes = [ingest(settings, key) for key in keys]
    rejected = [o.reasons for o in outcomes if not o.accepted]
    if rejected:
        raise RuntimeError(f"ingest rejected files: {rejected}")
    return {"files": len(keys), "rows": sum(o.rows for o in outcomes)}


def _version(work: Path) -> dict[str, Any]:
    from driftloop.data import BatchStore, build_training_set
    from driftloop.schema import load_schema

    settings = _settings()
    rows = BatchStore(settings.batches).read_all()
    schema = load_schema(settings.schema_path)
    training = build_training_set(rows, schema, settings.holdout_fraction, settings.seed)
    _save(work, "training", training)
    return {"train_rows": len(training.train), "holdout_rows": len(training.holdout)}


def _search(work: Path) -> dict[str, Any]:
    from driftloop.hpo import run_search
    from driftloop.registry import configure_tracking, ensure_experiment

    settings = _settings()
    training = _load(work, "training")
    configure_tracking(settings)
    experiment = ensure_experiment(settings, settings.model_name)
    search = run_search(training, settings, experiment, {"driftloop.trigger": "bench"}, _quiet)
    _save(work, "search", search)
    return {
        "trials": search.complete + search.pruned,
        "trials_complete": search.complete,
        "trials_pruned": search.pruned,
        "trials_failed": search.failed,
        "metric": search.metric,
        "best_cv_score": round(search.best_cv_score, 4),
    }


def _refit(work: Path) -> dict[str, Any]:
    from driftloop.candidate import register_candidate
    from driftloop.registry import Registry, configure_tracking

    settings = _settings()
    configure_tracking(settings)
    registry = Registry(settings.mlflow_tracking_uri, settings.model_name)
    training, search = _load(work, "training"), _load(work, "search")
    candidate = register_candidate(training, search, settings, registry, "bench")
    _save(work, "candidate", candidate)
    return {"holdout_metric": candidate.holdout.value, "version": candidate.version.version}


def _gate(work: Path, context: Any) -> dict[str, Any]:
    from assets.registry import promotion_gate
    from resources.deployment import DriftloopResource

    settings = _settings()
    decision = promotion_gate(
        context,
        driftloop=DriftloopResource(home=str(settings.home)),
        training_dataset=_load(work, "training"),
        hpo_study=_load(work, "search"),
        candidate_model=_load(work, "candidate"),
    ).value
    if not decision.applied:
        raise RuntimeError(f"the gate made no champion: {decision.reason}")
    return {"champion": decision.challenger_version}


def _serve(work: Path, dataset: str, rows: int) -> dict[str, Any]:
    """`rows` served predictions of the champion and their labels, as serving logs them:
    window files of `LOG_FILE_ROWS` rows from two writers, stamped in the last 5 minutes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from driftloop.logwindows import window_file
    from driftloop.registry import CHAMPION, Registry, configure_tracking
    from driftloop.schema import load_schema
    from driftloop.simulate import LoanStream
    from driftloop.training import TRUSTED_TYPES, classes_of, model_output
    from serving.prediction_log import FEEDBACK_SCHEMA, prediction_schema
    from serving.schemas import FeatureField

    settings = _settings()
    configure_tracking(settings)
    schema = load_schema(settings.schema_path)
    registry = Registry(settings.mlflow_tracking_uri, settings.model_name)
    champion = registry.by_alias(CHAMPION)
    model = registry.load_verified(champion.version, TRUSTED_TYPES)
    if dataset == "loans":
        frame = LoanStream(seed=99).take_frame(rows, schema.target)
    else:
        frame = diabetes_rows(rows, seed=99)
    x = frame[schema.feature_names]
    output, classes = model_output(model, x), [str(c) for c in classes_of(model)]
    now = datetime.now(UTC)
    start = pd.Timestamp(now - timedelta(seconds=300))
    at = pd.Series(start + pd.to_timedelta(np.linspace(0, 290, rows), unit="s")).dt.floor("us")
    ids = [uuid.uuid4().hex for _ in range(rows)]
    served: dict[str, Any] = {
        "request_id": ids,
        "index": np.zeros(rows, dtype="int32"),
        "at": at,
        "model_version": champion.version,
        "route": "champion",
        "key": None,
        "id": None,
        "latency_ms": 1.0,
    }
    if classes:
        served["prediction"] = np.asarray(classes)[output.argmax(axis=1)]
        served["probability"] = output.max(axis=1)
        served["probabilities"] = list(output)
    else:
        served["prediction"] = [repr(float(v)) for v in output]
        served["probability"] = None
        served["probabilities"] = None
    predictions = pd.DataFrame(served).assign(unseen=None)
    predictions = pd.concat([predictions, x.reset_index(drop=True)], axis=1)
    labels = frame[schema.target].astype(float if not classes else int)
    feedback = pd.DataFrame(
        {
            "request_id": ids,
            "id": None,
            "at": at + pd.Timedelta(seconds=5),
            "label": [repr(float(v)) for v in labels] if not classes else labels.astype(str),
        }
    )
    fields = tuple(FeatureField(f.name, f.dtype, f.nullable) for f in schema.features)
    tables = ((settings.prediction_log, prediction_schema(fields), predictions),)
    tables += ((settings.feedback_log, FEEDBACK_SCHEMA, feedback),)
    for folder, arrow_schema, table in tables:
        for part, start in enumerate(range(0, rows, LOG_FILE_ROWS)):
            chunk = table.iloc[start : start + LOG_FILE_ROWS]
            begin = int(chunk["at"].iloc[0].timestamp())
            name = window_file(begin - begin % 300, f"bench{part % 2}-{part}")
            buffer = io.BytesIO()
            arrow = pa.Table.from_pandas(chunk, schema=arrow_schema, preserve_index=False)
            pq.write_table(arrow, buffer)
            folder.write_bytes(name, buffer.getvalue())
    return {"served_rows": rows}


def _read_log(work: Path) -> dict[str, Any]:
    from driftloop.monitoring import read_log

    settings = _settings()
    since = datetime.now(UTC) - timedelta(seconds=settings.monitor_window_s)
    frame = read_log(settings.prediction_log, since, settings.prediction_log_window_s)
    return {"rows_read": len(frame)}


def _drift(work: Path, context: Any) -> dict[str, Any]:
    from assets.monitoring import feature_drift_report
    from resources.deployment import DriftloopResource

    settings = _settings()
    result = feature_drift_report(
        context,
        driftloop=DriftloopResource(home=str(settings.home)),
        training_dataset=_load(work, "training"),
    )
    meta = result.metadata
    return {"judged": bool(_plain(meta["judged"])), "share_drifted": _plain(meta["share_drifted"])}


def _quality(work: Path, context: Any) -> dict[str, Any]:
    from assets.monitoring import live_model_quality
    from resources.deployment import DriftloopResource

    settings = _settings()
    result = live_model_quality(context, driftloop=DriftloopResource(home=str(settings.home)))
    return {"labelled": _plain(result.metadata["labelled"])}


def _plain(value: Any) -> Any:
    return getattr(value, "value", value)


def _quiet(_: str) -> None:
    """Trial lines are not printed: the table is the output."""


def run_stage(name: str, work: Path, dataset: str, rows: int) -> dict[str, Any]:
    """One stage, timed around its call; imports and the asset context before the clock,
    as a Dagster run worker has them before its step: the code location, MLflow's SQL
    store and skops (each took 25-35 s to import on the loaded machine, inside the first
    stage that used it). Evidently's first report in the process stays inside the time,
    as it does in every monitoring run (a process per run)."""
    import dagster as dg
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    import skops.io  # noqa: F401
    from evidently import presets  # noqa: F401

    import pipelines.definitions  # noqa: F401

    context = dg.build_asset_context()

    calls: dict[str, Callable[[], dict[str, Any] | None]] = {
        "simulate": lambda: _simulate(work, dataset, rows),
        "ingest": lambda: _ingest(work),
        "version": lambda: _version(work),
        "search": lambda: _search(work),
        "refit": lambda: _refit(work),
        "gate": lambda: _gate(work, context),
        "serve": lambda: _serve(work, dataset, rows),
        "read_log": lambda: _read_log(work),
        "drift": lambda: _drift(work, context),
        "quality": lambda: _quality(work, context),
    }
    started = time.perf_counter()
    found = calls[name]() or {}
    seconds = time.perf_counter() - started
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Fit workers (spawned by a parallel search) peak on their own; the largest of them
    # beside this process's own peak: an upper bound of the stage's peak, not a sum.
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        **found,
        "seconds": round(seconds, 3),
        "peak_rss_mb": round(own / 1024, 1),
        "worker_peak_rss_mb": round(workers / 1024, 1),
    }


# --- in the parent: sizes, children, the table ------------------------------------------


def child(stage: str, work: Path, env: dict[str, str], dataset: str, rows: int) -> dict[str, Any]:
    """Run `stage` in a fresh interpreter; its numbers come back as JSON on a file."""
    out = work / f"{stage}.json"
    command = [sys.executable, __file__, "stage", stage, str(work), dataset, str(rows), str(out)]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"stage {stage} ({dataset}, {rows} rows) failed:\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())


def environment(home: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DRIFTLOOP_", "DAGSTER_"))}
    env.update(DRIFTLOOP_HOME=str(home), DRIFTLOOP_N_TRIALS=str(TRIALS), PYTHONPATH=str(ROOT))
    env.update(extra)
    return env


def one_size(
    root: Path, dataset: str, rows: int, extra: dict[str, str], stages: tuple[str, ...]
) -> dict[str, Any]:
    work = root / f"{dataset}-{rows}"
    work.mkdir(parents=True)
    env = environment(work / "home", extra)
    window = min(rows, 100_000)
    measured: dict[str, Any] = {}
    for stage in stages:
        measured[stage] = child(stage, work, env, dataset, window if stage == "serve" else rows)
        print(f"  {dataset} {rows:>9,} {stage:<9}{measured[stage]['seconds']:>9.1f} s", flush=True)
    return summarise(measured, window)


def summarise(measured: dict[str, Any], window: int) -> dict[str, Any]:
    """The JSON's per-size record: `<stage>_s` and `<stage>_rss_mb` for every stage."""
    out: dict[str, Any] = {"served_window_rows": window}
    for stage, numbers in measured.items():
        out[f"{stage}_s"] = numbers["seconds"]
        out[f"{stage}_rss_mb"] = numbers["peak_rss_mb"]
    out["champion_s"] = round(sum(measured[s]["seconds"] for s in TO_CHAMPION if s in measured), 2)
    peaks = [max(n["peak_rss_mb"], n["worker_peak_rss_mb"]) for n in measured.values()]
    out["peak_rss_mb"] = max(peaks)
    search = measured.get("search", {})
    for key in ("trials", "trials_complete", "trials_pruned", "metric", "best_cv_score"):
        if key in search:
            out[key] = search[key]
    if "refit" in measured:
        out["holdout_metric"] = measured["refit"]["holdout_metric"]
    if "drift" in measured:
        out["drift_judged"] = measured["drift"]["judged"]
    return out


def exponents(sizes: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Per stage, k of seconds ∝ rows^k by least squares on log-log."""
    rows = sorted(int(size) for size in sizes)
    found = {}
    for stage in (*STAGES, *MONITORS, "champion"):
        key = f"{stage}_s"
        points = [(r, sizes[str(r)][key]) for r in rows if sizes[str(r)].get(key, 0) > 0]
        if len(points) >= 2:
            x = np.log([p[0] for p in points])
            y = np.log([p[1] for p in points])
            found[stage] = round(float(np.polyfit(x, y, 1)[0]), 2)
    return found


def table(report: dict[str, Any]) -> str:
    lines = []
    parts = (("loans (simulator)", report), ("diabetes (resampled)", report.get("real")))
    for name, part in ((name, part) for name, part in parts if part and part["sizes"]):
        sizes = part["sizes"]
        columns = sorted(sizes, key=int)
        head = f"{name:<22}" + "".join(f"{int(c):>18,}" for c in columns) + f"{'k':>8}"
        lines += [head, "-" * len(head)]
        for stage in (*STAGES, *MONITORS, "champion"):
            cells = []
            for c in columns:
                seconds = sizes[c].get(f"{stage}_s")
                rss = sizes[c].get(f"{stage}_rss_mb")
                cell = "" if seconds is None else f"{seconds:.1f} s"
                cells.append(f"{cell + (f' / {rss:.0f} MB' if rss else ''):>18}")
            k = part["exponents"].get(stage)
            lines.append(f"{stage + '_s':<22}" + "".join(cells) + f"{'' if k is None else k:>8}")
        for key in ("trials", "trials_pruned", "holdout_metric", "peak_rss_mb"):
            values = "".join(f"{sizes[c].get(key, '')!s:>18}" for c in columns)
            lines.append(f"{key:<22}{values}")
        lines.append("")
    return "\n".join(lines)


def run(quick: bool, json_path: Path) -> dict[str, Any]:
    sizes = QUICK_SIZES if quick else SIZES
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="driftloop-scale-") as tmp:
        for dataset in DATASETS:
            measured: dict[str, dict[str, Any]] = {}
            for rows in sizes:  # written after every size: a long run leaves what it measured
                measured[str(rows)] = one_size(Path(tmp), dataset, rows, {}, (*STAGES, *MONITORS))
                part = {"sizes": measured, "exponents": exponents(measured)}
                if dataset == "loans":
                    report.update(part)
                else:
                    report["real"] = {"dataset": dataset, **part}
                json_path.write_text(json.dumps({**report, **machine()}, indent=2))
    report.update(machine())
    json_path.write_text(json.dumps(report, indent=2))
    return report


def compare(rows: int, json_path: Path) -> dict[str, Any]:
    """The rung search against k-fold CV on all rows, same data and trials: holdout metric
    of each refit candidate, and the search's seconds."""
    found: dict[str, Any] = {"rows": rows, "trials": TRIALS}
    with tempfile.TemporaryDirectory(prefix="driftloop-compare-") as tmp:
        for label, extra in (("rungs", {}), ("full_cv", {"DRIFTLOOP_HPO_RUNG_ROWS": "0"})):
            stages = ("simulate", "ingest", "version", "search", "refit")
            found[label] = one_size(Path(tmp) / label, "loans", rows, extra, stages)
    found["holdout_difference"] = round(
        found["rungs"]["holdout_metric"] - found["full_cv"]["holdout_metric"], 4
    )
    found.update(machine())
    json_path.write_text(json.dumps(found, indent=2))
    return found


def machine() -> dict[str, Any]:
    return {
        "machine": f"{platform.node()} {os.cpu_count()} cores {platform.python_version()}",
        # The machine is shared: a busy one makes every number slower, not wrong.
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        "hpo_parallel": int(os.environ.get("DRIFTLOOP_HPO_PARALLEL", "2")),
    }


ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["stage"]:
        stage, work, dataset, rows, out = argv[1:]
        numbers = run_stage(stage, Path(work), dataset, int(rows))
        Path(out).write_text(json.dumps(numbers))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k and 100k rows only")
    parser.add_argument("--compare", type=int, metavar="ROWS", help="rungs vs full CV instead")
    parser.add_argument("--json", type=Path, required=True, metavar="PATH")
    args = parser.parse_args(argv)
    if args.compare:
        print(json.dumps(compare(args.compare, args.json), indent=2))
    else:
        print(table(run(args.quick, args.json)))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
