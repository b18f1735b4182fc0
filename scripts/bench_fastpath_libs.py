"""Benchmark: our compiled fast path (`serving/fastpath.py`) against maintained compilers.

Each model is what `make_model` builds, fitted on the simulator's tables (loans for the
classifiers, Friedman for the regressors; the loans' categorical columns give boosting
categorical splits) and on breast cancer (numeric only: the one boosting case skl2onnx
converts correctly). Per model and batch size, every path answers the same request rows
(dicts, as serving receives them), interleaved call by call in rotating order so that the
machine's noise falls on all of them alike; the table shows the median microseconds per
call and the largest absolute difference from the pipeline's own `predict_proba` (or
`predict`) on 2,000 holdout rows. One thread everywhere, as a serving replica runs.

- sklearn: `frame_of(rows)` then the pipeline (serving's pandas path).
- ours: `CompiledPipeline.output(rows)`.
- onnxruntime: the whole pipeline converted by skl2onnx (one input per column), fed
  from the rows' frame by `driftloop.onnx_export.OnnxRunner`.
- treelite / tl2cgen (boosting only): our compiled columns build the trees' input
  matrix, then treelite's interpreter (`gtil.predict`) or tl2cgen's compiled C library.

    .venv/bin/python scripts/bench_fastpath_libs.py --json bench-fastpath-libs.json
"""

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn import datasets as sklearn_datasets
from threadpoolctl import threadpool_limits

from driftloop.onnx_export import OnnxRunner, graph
from driftloop.schema import DatasetSchema, infer_schema
from driftloop.simulate import FriedmanStream, LoanStream
from driftloop.training import make_model
from serving.fastpath import compile_pipeline, frame_of
from serving.model import example_rows
from serving.schemas import FeatureField

BATCHES = (1, 8, 32, 256)
BOOSTING = {
    "family": "hist_gradient_boosting",
    "learning_rate": 0.1,
    "max_iter": 211,  # the bench home's champion has 211 trees (docs/benchmarks.md)
    "max_leaf_nodes": 31,
    "min_samples_leaf": 20,
    "l2_regularization": 1e-6,
}
Predict = Callable[[list[dict[str, Any]]], np.ndarray]


def tables(rows: int) -> dict[str, pd.DataFrame]:
    cancer = sklearn_datasets.load_breast_cancer(as_frame=True).frame
    cancer.columns = [c.replace(" ", "_") for c in cancer.columns]
    return {
        "loans": LoanStream(seed=7).take_frame(rows, "label"),
        "friedman": FriedmanStream(seed=7).take_frame(rows, "label"),
        "cancer": cancer.rename(columns={"target": "label"}),
    }


def models() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        ("HGB classifier, loans", "loans", BOOSTING),
        ("HGB classifier, breast cancer", "cancer", BOOSTING),
        ("logistic, loans", "loans", {"family": "logistic_regression", "C": 1.0}),
        ("HGB regressor, Friedman", "friedman", BOOSTING),
        ("ridge, Friedman", "friedman", {"family": "ridge", "alpha": 1.0}),
    ]


def treelite_paths(
    pipeline: Any, compiled: Any, classifier: bool, tmp: Path, compile_c: bool
) -> dict[str, Predict]:
    """treelite's interpreter and tl2cgen's compiled library over our encoded matrix."""
    import treelite
    import treelite.gtil
    import treelite.sklearn

    model = treelite.sklearn.import_model(pipeline.steps[-1][1])

    def shaped(out: np.ndarray) -> np.ndarray:
        out = out.reshape(out.shape[0], -1)
        return np.hstack([1 - out, out]) if classifier else out.ravel()

    paths: dict[str, Predict] = {
        "treelite": lambda rows: shaped(
            treelite.gtil.predict(model, compiled.matrix(rows), nthread=1)
        )
    }
    if compile_c:
        import tl2cgen

        library = tmp / f"model-{id(pipeline)}.so"
        started = time.perf_counter()
        tl2cgen.export_lib(model, toolchain="gcc", libpath=str(library), nthread=1)
        print(f"  tl2cgen compiled in {time.perf_counter() - started:.1f} s")
        predictor = tl2cgen.Predictor(str(library), nthread=1)
        paths["tl2cgen"] = lambda rows: shaped(
            predictor.predict(tl2cgen.DMatrix(compiled.matrix(rows), dtype="float64"))
        )
    return paths


def timed(paths: dict[str, Predict], rows: list[dict[str, Any]], rounds: int, calls: int) -> dict:
    """Median µs per call of each path, interleaved call by call, order rotated per round."""
    samples: dict[str, list[float]] = {name: [] for name in paths}
    names = list(paths)
    for name in names:  # warm up
        paths[name](rows)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for _ in range(calls):
            for name in order:
                started = time.perf_counter_ns()
                paths[name](rows)
                samples[name].append((time.perf_counter_ns() - started) / 1000)
    return {name: statistics.median(s) for name, s in samples.items()}


def measure(
    title: str, frame: pd.DataFrame, params: dict[str, Any], args: argparse.Namespace, tmp: Path
) -> list[dict[str, Any]]:
    """One model's rows of the table: every path at every batch size."""
    schema: DatasetSchema = infer_schema(frame, "label")
    x, y = frame[schema.feature_names], frame["label"]
    split = len(x) - min(2_000, len(x) // 3)
    pipeline = make_model(params, schema, seed=0).fit(x.iloc[:split], y.iloc[:split])
    features = tuple(FeatureField(f.name, f.dtype, f.nullable) for f in schema.features)
    holdout = example_rows(x.iloc[split:], features)
    classifier = not schema.is_regression
    compiled = compile_pipeline(pipeline, features)

    def sklearn_path(rows: list[dict[str, Any]]) -> np.ndarray:
        frame = frame_of(rows, features)
        return pipeline.predict_proba(frame) if classifier else pipeline.predict(frame)

    paths: dict[str, Predict] = {"sklearn": sklearn_path, "ours": compiled.output}
    print(f"{title}: {len(x)} rows, {len(features)} features")
    started = time.perf_counter()
    runner = OnnxRunner.of(graph(pipeline, schema), schema)  # unchecked: the table shows it
    print(f"  skl2onnx converted in {time.perf_counter() - started:.1f} s")
    paths["onnxruntime"] = lambda rows: runner.output(frame_of(rows, features))
    if params["family"] == "hist_gradient_boosting":
        paths |= treelite_paths(pipeline, compiled, classifier, tmp, not args.no_tl2cgen)
    reference = sklearn_path(holdout)
    differences = {
        name: float(np.max(np.abs(path(holdout) - reference))) for name, path in paths.items()
    }
    results = []
    for batch in BATCHES:
        rows = (holdout * (1 + batch // len(holdout)))[:batch]
        medians = timed(paths, rows, args.rounds, args.calls)
        results += [
            {
                "model": title,
                "path": name,
                "rows": batch,
                "median_us": round(medians[name], 1),
                "max_abs_diff": differences[name],
            }
            for name in paths
        ]
        shown = "  ".join(f"{n} {medians[n]:.0f}" for n in paths)
        print(f"  {batch:>3} rows: {shown} µs")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=6_000, help="rows per simulated table")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calls", type=int, default=30, help="calls per path per round")
    parser.add_argument("--no-tl2cgen", action="store_true", help="skip the C compiles (20+ s)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    frames = tables(args.rows)
    tmp = Path(tempfile.mkdtemp(prefix="driftloop-bench-fastpath-"))
    results: list[dict[str, Any]] = []
    with threadpool_limits(limits=1):  # one OpenMP/BLAS thread, as serving pins them
        for title, table, params in models():
            results += measure(title, frames[table], params, args, tmp)
    table_lines = ["| model | path | 1 row | 8 rows | 32 rows | 256 rows | max abs diff |"]
    table_lines.append("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for title, _, _ in models():
        mine = [r for r in results if r["model"] == title]
        for name in dict.fromkeys(r["path"] for r in mine):
            cells = {r["rows"]: r for r in mine if r["path"] == name}
            times = " | ".join(f"{cells[b]['median_us']:.0f}" for b in BATCHES)
            table_lines.append(
                f"| {title} | {name} | {times} | {cells[BATCHES[0]]['max_abs_diff']:.1e} |"
            )
    print("\nmedian µs per call (interleaved), max abs diff vs the pipeline on holdout rows")
    print("\n".join(table_lines))
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "results": results,
                    "rounds": args.rounds,
                    "calls": args.calls,
                    "python": platform.python_version(),
                    "cpus": os.cpu_count(),
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
