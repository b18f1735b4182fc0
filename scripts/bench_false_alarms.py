"""How often the drift trigger fires on traffic that did not change (false alarms per hour).

Replays 20 minutes of traffic, at the quick demo's 50 requests/s and at a quiet deployment's
4 (a 60 s monitoring window, a verdict every 30 s), through the functions the
`feature_drift_report` asset runs, on two stationary streams: the loan simulator without
drift, and a real table with no temporal change (scikit-learn's breast cancer data: the
training split of 455 rows as the reference, so Evidently tests p-values; served rows drawn
at random from the whole table). Each verdict is counted with Evidently's per-feature tests
alone and with the effect-size gate (`driftloop.effect_size`); a drift trigger is a verdict
with a drifted share at or above `DRIFTLOOP_DRIFT_SHARE_THRESHOLD` (0.3). A positive control
(the simulator's covariate shift from half time) shows the gate still sees a real shift. It
is a replay, not a live run: the sensors' cool-downs and the label-driven quality trigger
are not part of it.

    .venv/bin/python scripts/bench_false_alarms.py --json false-alarms.json [--minutes 20]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.datasets import load_breast_cancer

from assets.monitoring import REFERENCE_ROWS
from driftloop.effect_size import effect_sizes, gated
from driftloop.monitoring import feature_drift
from driftloop.simulate import DriftPlan, LoanStream

WINDOW_S, EVERY_S, SHARE = 60, 30, 0.3
# The quick demo's traffic, and a quiet deployment's (240 rows per window).
RATES = (50, 4)
TARGET = "label"


def loans(rows: int, seed: int, shift_at: int | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    stream = LoanStream(seed=seed)
    train = stream.take_frame(10_000, TARGET).drop(columns=TARGET)
    if shift_at is not None:
        stream.plan = DriftPlan(covariate_shift_at=stream.position + shift_at)
    return train, stream.take_frame(rows, TARGET).drop(columns=TARGET)


def breast_cancer(rows: int, seed: int, _: int | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The training split (455 rows, so Evidently tests p-values) as the reference; served
    rows drawn from the whole table, the population the split came from."""
    table = load_breast_cancer(as_frame=True).data
    rng = np.random.default_rng(seed)
    train = table.sample(frac=0.8, random_state=seed)
    return train, table.iloc[rng.integers(0, len(table), rows)].reset_index(drop=True)


def replay(
    name: str, make, minutes: float, rate: int, seed: int, shift_at: int | None
) -> dict[str, object]:
    rows = int(minutes * 60 * rate)
    train, traffic = make(rows, seed, shift_at)
    reference = train.sample(n=min(REFERENCE_ROWS, len(train)), random_state=seed)
    numerical = [c for c in train.columns if pd.api.types.is_numeric_dtype(train[c])]
    categorical = [c for c in train.columns if c not in numerical]
    plain, gate, seconds = [], [], []
    for end in range(EVERY_S * rate, rows + 1, EVERY_S * rate):
        window = traffic.iloc[max(0, end - WINDOW_S * rate) : end]
        started = time.perf_counter()
        result = feature_drift(reference, window, numerical, categorical)
        sizes = effect_sizes(reference, window, numerical, categorical, seed)
        seconds.append(time.perf_counter() - started)
        plain.append(result.share_drifted)
        gate.append(gated(result, sizes).share_drifted)
    hours = minutes / 60
    after = (shift_at or 0) // (EVERY_S * rate)
    return {
        "stream": name,
        "requests_per_s": rate,
        "window_rows": WINDOW_S * rate,
        "verdicts": len(plain),
        "changed_from_verdict": None if shift_at is None else after,
        "triggers_evidently": sum(s >= SHARE for s in plain[: after or None]),
        "triggers_gated": sum(s >= SHARE for s in gate[: after or None]),
        "triggers_per_hour_evidently": sum(s >= SHARE for s in plain[: after or None]) / hours,
        "triggers_per_hour_gated": sum(s >= SHARE for s in gate[: after or None]) / hours,
        "detected_after_change_evidently": None
        if shift_at is None
        else any(s >= SHARE for s in plain[after:]),
        "detected_after_change_gated": None
        if shift_at is None
        else any(s >= SHARE for s in gate[after:]),
        "mean_share_evidently": float(np.mean(plain)),
        "mean_share_gated": float(np.mean(gate)),
        "seconds_per_verdict": float(np.median(seconds)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    runs = []
    for rate in RATES:
        half = int(args.minutes * 60 * rate / 2)
        runs += [
            replay("loans, stationary", loans, args.minutes, rate, 1, None),
            replay("breast cancer (real), stationary", breast_cancer, args.minutes, rate, 2, None),
            replay("loans, covariate shift at half time", loans, args.minutes, rate, 3, half),
        ]
    print(
        "| stream | window rows | verdicts | triggers (Evidently) | triggers (gated) "
        "| per hour (E / gated) | shift seen (E / gated) | mean share (E / gated) | s per verdict |"
    )
    print("|---|---:|---:|---:|---:|---|---|---|---:|")
    for r in runs:
        seen = (
            "-"
            if r["changed_from_verdict"] is None
            else f"{r['detected_after_change_evidently']} / {r['detected_after_change_gated']}"
        )
        print(
            f"| {r['stream']} | {r['window_rows']} | {r['verdicts']} | {r['triggers_evidently']} | "
            f"{r['triggers_gated']} | {r['triggers_per_hour_evidently']:.1f} / "
            f"{r['triggers_per_hour_gated']:.1f} | {seen} | {r['mean_share_evidently']:.2f} / "
            f"{r['mean_share_gated']:.2f} | {r['seconds_per_verdict']:.2f} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"minutes": args.minutes, "runs": runs}, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
