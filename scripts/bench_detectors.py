"""Benchmark: the streaming error detectors (ADWIN, Page-Hinkley, CUSUM) on real streams.

For each seed a model is trained on 2,000 rows of the stream before any change, then
watched over `--before` labelled samples of the same world followed by `--after` of a
changed one, fed one at a time to `driftloop.streaming.ErrorDetectors` as the sensor
feeds them (each detector alone, and `any`: all three, the first to fire, as the sensor
runs them).
Models are depth-8 decision trees (quick to fit on two busy cores; the detectors only
see their errors). Scenarios:

- `abrupt`: the loan stream (river's Agrawal) switches from function 4 to function 1;
- `subtle`: the same stream stays, and after the change a right answer turns wrong with
  the probability that costs 3 accuracy points;
- `regression`: river's Friedman switches to its global ('gra') drift, errors scaled by
  3 x the holdout MAE and capped at 1, as `driftloop.monitoring.error_stream` does.

Reported per scenario and detector: detections within `--after` samples, the median and
max labelled samples from the change to the alarm, the median distance of the estimated
change point from the true one, and false alarms before the change. `stationary` runs
`--stationary` samples of the unchanged loan (and Friedman) stream per seed: false alarms
per 10,000 samples.

    .venv/bin/python scripts/bench_detectors.py --seeds 20 --json bench-detectors.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from dataclasses import replace

import numpy as np
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

from driftloop.simulate import DriftPlan, FriedmanStream, LoanStream
from driftloop.streaming import DETECTORS, DetectorConfig, ErrorDetectors

TRAIN_ROWS = 2000
CHOICES = (*DETECTORS, "any")


def loan_errors(seed: int, before: int, after: int, calm: int) -> dict[str, np.ndarray]:
    """A classifier's 0/1 errors: `abrupt` (function 4 -> 1 after `before`), `subtle`
    (3 accuracy points lost after `before`) and `stationary` (`calm` samples)."""
    train = LoanStream(seed=seed).take_frame(TRAIN_ROWS, "y")
    model = DecisionTreeClassifier(max_depth=8, random_state=seed)
    model.fit(train.drop(columns="y"), train.y)

    def errors(stream: LoanStream, rows: int) -> np.ndarray:
        stream.take_frame(TRAIN_ROWS, "y")  # the training rows: watch what comes after
        watched = stream.take_frame(rows, "y")
        return (model.predict(watched.drop(columns="y")) != watched.y.to_numpy()).astype(float)

    plan = DriftPlan(concept_drift_at=TRAIN_ROWS + before)
    abrupt = errors(LoanStream(seed=seed, plan=plan), before + after)
    stationary = errors(LoanStream(seed=seed), max(calm, before + after))
    subtle = stationary[: before + after].copy()
    rng = np.random.default_rng(seed)
    right = subtle[before:] == 0
    flip = rng.random(after) < 0.03 / max(right.mean(), 1e-9)
    subtle[before:][right & flip] = 1.0
    return {"abrupt": abrupt, "subtle": subtle, "stationary": stationary[:calm]}


def friedman_errors(seed: int, before: int, after: int, calm: int) -> dict[str, np.ndarray]:
    """A regressor's scaled absolute errors (3 x holdout MAE is 1): `regression` (river's
    'gra' drift after `before`) and `stationary` (`calm` samples)."""
    fit = FriedmanStream(seed=seed)
    train, holdout = fit.take_frame(TRAIN_ROWS, "y"), fit.take_frame(500, "y")
    model = DecisionTreeRegressor(max_depth=8, random_state=seed)
    model.fit(train.drop(columns="y"), train.y)
    mae = float(np.abs(model.predict(holdout.drop(columns="y")) - holdout.y).mean())

    def errors(stream: FriedmanStream, rows: int) -> np.ndarray:
        stream.take_frame(TRAIN_ROWS + 500, "y")
        watched = stream.take_frame(rows, "y")
        absolute = np.abs(model.predict(watched.drop(columns="y")) - watched.y.to_numpy())
        return np.clip(absolute / (3 * mae), 0.0, 1.0)

    plan = DriftPlan(concept_drift_at=TRAIN_ROWS + 500 + before)
    return {
        "regression": errors(FriedmanStream(seed=seed, plan=plan), before + after),
        "stationary": errors(FriedmanStream(seed=seed), calm),
    }


def run(errors: np.ndarray, onset: int | None, config: DetectorConfig) -> dict[str, object]:
    """Feed a stream one sample at a time; alarms before `onset` are false, the first one
    after it is the detection (its delay and change estimate)."""
    detectors = ErrorDetectors(config)
    false_alarms, delay, estimate = 0, None, None
    for i, error in enumerate(errors):
        alarm = detectors.update(float(i), float(error))
        if alarm is None:
            continue
        if onset is None or i < onset:
            false_alarms += 1
            continue
        delay, estimate = i + 1 - onset, int(alarm.change_at) - onset
        break
    return {"false_alarms": false_alarms, "delay": delay, "estimate_error": estimate}


def summarise(results: list[dict[str, object]], samples: int) -> dict[str, object]:
    delays = [r["delay"] for r in results if r["delay"] is not None]
    estimates = [abs(r["estimate_error"]) for r in results if r["estimate_error"] is not None]
    false = sum(r["false_alarms"] for r in results)
    return {
        "runs": len(results),
        "detected": len(delays),
        "median_delay": float(np.median(delays)) if delays else None,
        "max_delay": int(max(delays)) if delays else None,
        "median_change_point_error": float(np.median(estimates)) if estimates else None,
        "false_alarms": false,
        "false_alarms_per_10k": false / samples * 10_000 if samples else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--before", type=int, default=2000, help="labelled samples before")
    parser.add_argument("--after", type=int, default=3000, help="labelled samples after")
    parser.add_argument("--stationary", type=int, default=10_000, help="per seed and task")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    started = time.perf_counter()
    base = DetectorConfig()
    configs = {
        name: replace(base, detectors=(name,) if name != "any" else DETECTORS) for name in CHOICES
    }
    b, a, n = args.before, args.after, args.stationary
    streams: dict[str, list[np.ndarray]] = {}
    for seed in range(1, args.seeds + 1):
        for name, errors in loan_errors(seed, b, a, n).items():
            streams.setdefault(name, []).append(errors)
        for name, errors in friedman_errors(seed, b, a, n).items():
            streams.setdefault(name, []).append(errors)
    rows: dict[str, dict[str, object]] = {}
    for scenario in ("abrupt", "subtle", "regression", "stationary"):
        onset = None if scenario == "stationary" else b
        samples = sum(len(e) if onset is None else onset for e in streams[scenario])
        for name, config in configs.items():
            results = [run(errors, onset, config) for errors in streams[scenario]]
            rows[f"{scenario}/{name}"] = summarise(results, samples)
    print(f"{'scenario/detector':<24}{'found':>7}{'median':>8}{'max':>6}{'cp err':>8}{'FA/10k':>8}")
    for key, row in rows.items():
        found = f"{row['detected']}/{row['runs']}"
        median = "-" if row["median_delay"] is None else f"{row['median_delay']:.0f}"
        most = "-" if row["max_delay"] is None else str(row["max_delay"])
        cp = row["median_change_point_error"]
        cp_text = "-" if cp is None else f"{cp:.0f}"
        print(
            f"{key:<24}{found:>7}{median:>8}{most:>6}{cp_text:>8}"
            f"{row['false_alarms_per_10k']:>8.2f}"
        )
    elapsed = time.perf_counter() - started
    print(f"{elapsed:.0f} s")
    if args.json:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
        report = {
            "args": vars(args),
            "config": {k: v for k, v in vars(base).items()},
            "results": rows,
            "commit": commit,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "seconds": elapsed,
        }
        with open(args.json, "w") as out:
            json.dump(report, out, indent=2)


if __name__ == "__main__":
    main()
