"""Label-free accuracy estimation (`driftloop.estimation`) against realized accuracy.

For each seed: the loop's default boosting pipeline is fitted on 4,000 loan applications
(river's Agrawal, `driftloop.simulate.LoanStream`), its confidence calibrated on 1,000
held-out ones exactly as registration does, then served 20 windows of 250 rows: 8 before
the change, 12 after it. Three episodes: covariate shift only (P(x) moves, P(y | x) does
not: the estimate should follow the realized accuracy), once as the simulator shifts and
once towards rows the model finds hard (accuracy falls far more); and concept drift (the
function changes: the estimate should not follow, and the gap is the evidence). Printed as
a table and written as JSON:

    .venv/bin/python scripts/bench_estimation.py --seeds 5 --json estimation.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import pandas as pd

from driftloop.estimation import confidence_calibration, estimate_accuracy, estimate_gap
from driftloop.schema import infer_schema
from driftloop.simulate import DriftPlan, LoanStream
from driftloop.training import DEFAULT_TRIALS, make_model

TARGET = "approved"
TRAIN_ROWS, HOLDOUT_ROWS, WINDOW, BEFORE, AFTER = 4000, 1000, 250, 8, 12
# Flagged when the estimate is this far under the holdout accuracy (beyond 2 standard
# errors): the threshold an operator would set for "act before labels arrive".
DROP = 0.03


def episode(seed: int, kind: str) -> dict[str, object]:
    stream = LoanStream(seed=seed)
    train = stream.take_frame(TRAIN_ROWS, TARGET)
    holdout = stream.take_frame(HOLDOUT_ROWS, TARGET)
    schema = infer_schema(train, TARGET)
    model = make_model(DEFAULT_TRIALS["classification"][0], schema, seed)
    x, y = train.drop(columns=TARGET), train[TARGET]
    model.fit(x, y)

    calibration = np.asarray(
        confidence_calibration(model, holdout.drop(columns=TARGET), holdout[TARGET])
    )
    reference = float((model.predict(holdout.drop(columns=TARGET)) == holdout[TARGET]).mean())
    at = stream.position + BEFORE * WINDOW
    if kind == "covariate":
        stream.plan = DriftPlan(covariate_shift_at=at)
    elif kind == "concept":
        stream.plan = DriftPlan(concept_drift_at=at)
    windows = []
    flagged_after = None
    for index in range(BEFORE + AFTER):
        after = index >= BEFORE
        frame = (
            hard_rows(stream, model, WINDOW)
            if kind == "hard_covariate" and after
            else stream.take_frame(WINDOW, TARGET)
        )
        rows = frame.drop(columns=TARGET)
        probabilities = model.predict_proba(rows)
        realized = float((model.classes_[probabilities.argmax(axis=1)] == frame[TARGET]).mean())
        estimate = estimate_accuracy(probabilities.max(axis=1), calibration)
        assert estimate is not None
        gap, beyond = estimate_gap(realized, estimate)
        if after and flagged_after is None and estimate.below(reference, DROP):
            flagged_after = (index - BEFORE + 1) * WINDOW
        windows.append(
            {
                "after_change": after,
                "realized": realized,
                "estimated": estimate.accuracy,
                "gap": gap,
                "gap_beyond_chance": beyond,
            }
        )
    post = [w for w in windows if w["after_change"]]
    pre = [w for w in windows if not w["after_change"]]
    return {
        "seed": seed,
        "kind": kind,
        "holdout_accuracy": reference,
        "realized_before": statistics.mean(w["realized"] for w in pre),
        "realized_after": statistics.mean(w["realized"] for w in post),
        "estimated_after": statistics.mean(w["estimated"] for w in post),
        "mean_abs_error_before": statistics.mean(abs(w["gap"]) for w in pre),
        "mean_abs_error_after": statistics.mean(abs(w["gap"]) for w in post),
        "gap_windows_after": sum(w["gap_beyond_chance"] for w in post),
        "gap_windows_before": sum(w["gap_beyond_chance"] for w in pre),
        "flagged_after_rows": flagged_after,
        "windows": windows,
    }


def hard_rows(stream: LoanStream, model, rows: int) -> pd.DataFrame:
    """A covariate shift towards the applications the model finds hard: a row it is over
    80 % sure of is kept one time in ten. Selection on x alone leaves P(y | x) as it was."""
    kept: list[pd.DataFrame] = []
    while sum(len(k) for k in kept) < rows:
        frame = stream.take_frame(rows, TARGET)
        sure = model.predict_proba(frame.drop(columns=TARGET)).max(axis=1) > 0.8
        keep = ~sure | (np.random.default_rng(len(kept)).random(len(frame)) < 0.1)
        kept.append(frame[keep])
    return pd.concat(kept, ignore_index=True).head(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = [
        episode(seed, kind)
        for kind in ("covariate", "hard_covariate", "concept")
        for seed in range(args.seeds)
    ]
    header = (
        "| episode | seed | holdout acc | realized before | realized after | estimated after "
        "| MAE est. before | MAE est. after | flagged after rows | gap windows (before/after) |"
    )
    print(header)
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in results:
        print(
            f"| {r['kind']} | {r['seed']} | {r['holdout_accuracy']:.3f}"
            f" | {r['realized_before']:.3f}"
            f" | {r['realized_after']:.3f} | {r['estimated_after']:.3f}"
            f" | {r['mean_abs_error_before']:.3f} | {r['mean_abs_error_after']:.3f}"
            f" | {r['flagged_after_rows'] or '-'}"
            f" | {r['gap_windows_before']}/{r['gap_windows_after']} |"
        )
    if args.json:
        args.json.write_text(
            json.dumps({"window_rows": WINDOW, "drop": DROP, "runs": results}, indent=1)
        )
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
