"""Benchmark: canary decisions on simulated outcomes, sequential test against per-step Welch.

Each simulated canary walks the default steps (5 % → 25 % → 50 % → 100 %) as the canary
asset does: it is judged every `--tick` new labelled outcomes per arm, needs
`--min-samples` per arm, and rolls back at `--max-samples` if still inconclusive.
`welch` judges each step on that step's outcomes only, read at every check (today's
classic mode); `sequential` judges on everything since the canary started with the
always-valid interval, and promotes a clear winner at once. Outcomes are right/wrong
(accuracy) with the champion at `--base`; the challenger is equal, 2 points better, 2 or
10 points worse. The intervals are computed for all canaries at once with numpy; a check
at start asserts they equal `driftloop.canary.welch` / `sequential` on sample cases.

A second table splits live traffic by the canary's weight (`--traffic` labelled requests
per check, each sent to the challenger with the current weight) and compares the fixed
steps (sequential test) with `bandit` (the same interval, the weight set to the
challenger's Thompson share between the first step and 1 - `--champion-floor`): decision
rates, requests to decision, and regret, the expected wrong answers served during the
canary beyond what always serving the better arm would have given.

    .venv/bin/python scripts/bench_canary.py --canaries 10000 --json bench-canary.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
from scipy import stats

from driftloop.canary import sequential, welch

STEPS = 3  # judged transitions: 5 % -> 25 % -> 50 % -> 100 %


def intervals(
    mode: str, s1, q1, n1, s2, q2, n2, confidence: float, horizon: int
) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds of the challenger's gain for every canary at once, from each
    arm's sum, sum of squares and count (the same formulas as driftloop.canary)."""
    m1, m2 = s1 / n1, s2 / n2
    v1 = (q1 - n1 * m1**2) / (n1 - 1)
    v2 = (q2 - n2 * m2**2) / (n2 - 1)
    difference = m1 - m2
    variance = v1 / n1 + v2 / n2
    with np.errstate(divide="ignore", invalid="ignore"):
        if mode == "welch":
            df = variance**2 / ((v1 / n1) ** 2 / (n1 - 1) + (v2 / n2) ** 2 / (n2 - 1))
            half = stats.t.ppf(0.5 + confidence / 2, df) * np.sqrt(variance)
        else:
            alpha = 1 - confidence
            information = 1 / variance
            planned = horizon / np.maximum(v1 + v2, 1e-12)
            rho2 = (-2 * np.log(alpha) + np.log(-2 * np.log(alpha) + 1)) / planned
            bound = np.sqrt(
                (information + 1 / rho2) * (2 * np.log(1 / alpha) + np.log1p(information * rho2))
            )
            half = bound / information
    half = np.where(variance > 0, half, 0.0)
    return difference - half, difference + half


def check_against_product(rng: np.random.Generator) -> None:
    for _ in range(20):
        a = (rng.random(rng.integers(100, 3000)) < 0.9).astype(float)
        b = (rng.random(rng.integers(100, 3000)) < 0.85).astype(float)
        sums = (a.sum(), (a**2).sum(), len(a), b.sum(), (b**2).sum(), len(b))
        for mode, product in (
            ("welch", welch(a, b, 0.95)[1:3]),
            ("sequential", sequential(a, b, 0.95, 1000)[1:]),
        ):
            low, high = intervals(mode, *(np.array([v], float) for v in sums), 0.95, 1000)
            assert np.allclose([low[0], high[0]], product), (mode, low, high, product)


def simulate(
    mode: str, gain: float, args: argparse.Namespace, rng: np.random.Generator
) -> dict[str, float]:
    """Run `args.canaries` canaries; the share promoted and rolled back, and outcomes per
    arm until the decision."""
    k = args.canaries
    p_champion, p_challenger = args.base, args.base + gain
    horizon = min(args.max_samples, 10 * args.min_samples)
    state = np.zeros(k, dtype=int)  # 0 running, 1 promoted, 2 rolled back
    step = np.zeros(k, dtype=int)
    used = np.zeros(k)  # outcomes per arm consumed until the decision
    sums = np.zeros((6, k))  # the judged window: s1, q1, n1, s2, q2, n2
    while (state == 0).any():
        running = state == 0
        # one tick of new outcomes per arm (right = 1, wrong = 0; squares equal the sums)
        new1 = rng.binomial(args.tick, p_challenger, k).astype(float)
        new2 = rng.binomial(args.tick, p_champion, k).astype(float)
        for row, value in (
            (0, new1),
            (1, new1),
            (2, args.tick),
            (3, new2),
            (4, new2),
            (5, args.tick),
        ):
            sums[row] += np.where(running, value, 0)
        used += np.where(running, args.tick, 0)
        n = sums[2]
        ready = running & (n >= args.min_samples)
        low, high = intervals(mode, *sums, args.confidence, horizon)
        rollback = ready & (high < 0)
        promote = ready & ~rollback & (mode == "sequential") & (low > 0)
        advance = ready & ~rollback & ~promote & (low > -args.margin)
        at_cap = ready & ~rollback & ~promote & ~advance & (n >= args.max_samples)
        state[rollback | at_cap] = 2
        state[promote] = 1
        step[advance] += 1
        finished = advance & (step >= STEPS)
        state[finished] = 1
        if mode == "welch":  # the next step judges only its own outcomes
            sums[:, advance & ~finished] = 0
    return {
        "promoted": float((state == 1).mean()),
        "rolled_back": float((state == 2).mean()),
        "mean_outcomes_per_arm": float(used.mean()),
    }


def simulate_traffic(
    mode: str, gain: float, args: argparse.Namespace, rng: np.random.Generator
) -> dict[str, float]:
    """Canaries whose arms get traffic by weight, judged on everything since the start."""
    k, total = args.canaries, args.traffic
    p_champion, p_challenger = args.base, args.base + gain
    best = max(p_champion, p_challenger)
    horizon = min(args.max_samples, 10 * args.min_samples)
    steps = np.array([0.05, 0.25, 0.5, 1.0])
    state = np.zeros(k, dtype=int)  # 0 running, 1 promoted, 2 rolled back
    step = np.zeros(k, dtype=int)
    weight = np.full(k, steps[0])
    requests, regret = np.zeros(k), np.zeros(k)
    sums = np.zeros((6, k))
    while (state == 0).any():
        running = state == 0
        to_challenger = rng.binomial(total, weight)
        to_champion = total - to_challenger
        right1 = rng.binomial(to_challenger, p_challenger).astype(float)
        right2 = rng.binomial(to_champion, p_champion).astype(float)
        for row, value in enumerate((right1, right1, to_challenger, right2, right2, to_champion)):
            sums[row] += np.where(running, value, 0)
        requests += np.where(running, total, 0)
        regret += np.where(
            running, to_challenger * (best - p_challenger) + to_champion * (best - p_champion), 0
        )
        ready = running & (np.minimum(sums[2], sums[5]) >= args.min_samples)
        low, high = intervals("sequential", *sums, args.confidence, horizon)
        rollback = ready & ((high < 0) | (np.minimum(sums[2], sums[5]) >= args.max_samples))
        if mode == "bandit":
            promote = ready & ~rollback & (low > -args.margin)
            m1, m2 = sums[0] / sums[2], sums[3] / sums[5]
            with np.errstate(divide="ignore", invalid="ignore"):
                se = np.sqrt(
                    (sums[1] - sums[2] * m1**2) / (sums[2] - 1) / sums[2]
                    + (sums[4] - sums[5] * m2**2) / (sums[5] - 1) / sums[5]
                )
                better = np.where(se > 0, stats.norm.cdf((m1 - m2) / se), (m1 > m2) * 1.0)
            share = np.clip(better, steps[0], 1 - args.champion_floor)
            weight = np.where(ready & ~rollback & ~promote, share, weight)
        else:
            promote = ready & ~rollback & (low > 0)
            advance = ready & ~rollback & ~promote & (low > -args.margin)
            step[advance] += 1
            promote |= advance & (step >= len(steps) - 1)
            weight = np.where(advance, steps[np.minimum(step, len(steps) - 1)], weight)
        state[rollback] = 2
        state[promote & ~rollback] = 1
    return {
        "promoted": float((state == 1).mean()),
        "rolled_back": float((state == 2).mean()),
        "mean_requests_to_decision": float(requests.mean()),
        "mean_regret": float(regret.mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--canaries", type=int, default=10_000)
    parser.add_argument("--base", type=float, default=0.9)
    parser.add_argument("--tick", type=int, default=50)
    parser.add_argument("--min-samples", type=int, default=100)
    parser.add_argument("--max-samples", type=int, default=5_000)
    parser.add_argument("--margin", type=float, default=0.02)
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--traffic", type=int, default=1000, help="requests per check")
    parser.add_argument("--champion-floor", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=Path("bench-canary.json"))
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    check_against_product(rng)
    started = time.perf_counter()
    results: dict[str, dict[str, dict[str, float]]] = {}
    gains = {"equal": 0.0, "+2 points": 0.02, "-2 points": -0.02, "-10 points": -0.10}
    for name, gain in gains.items():
        results[name] = {mode: simulate(mode, gain, args, rng) for mode in ("welch", "sequential")}
    print(
        "| challenger | mode | promoted | rolled back | outcomes per arm to decision |\n"
        "|---|---|---:|---:|---:|"
    )
    for name, by_mode in results.items():
        for mode, r in by_mode.items():
            print(
                f"| {name} | {mode} | {r['promoted']:.2%} | {r['rolled_back']:.2%} | "
                f"{r['mean_outcomes_per_arm']:.0f} |"
            )
    by_traffic = {
        name: {mode: simulate_traffic(mode, gain, args, rng) for mode in ("steps", "bandit")}
        for name, gain in gains.items()
    }
    print(
        "\n| challenger | allocation | promoted | rolled back | requests to decision | regret |\n"
        "|---|---|---:|---:|---:|---:|"
    )
    for name, by_mode in by_traffic.items():
        for mode, r in by_mode.items():
            print(
                f"| {name} | {mode} | {r['promoted']:.2%} | {r['rolled_back']:.2%} | "
                f"{r['mean_requests_to_decision']:.0f} | {r['mean_regret']:.1f} |"
            )
    report = {
        "canaries_per_setting": args.canaries,
        "base_accuracy": args.base,
        "tick": args.tick,
        "min_samples": args.min_samples,
        "max_samples": args.max_samples,
        "margin": args.margin,
        "confidence": args.confidence,
        "seconds": round(time.perf_counter() - started, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "results": results,
        "traffic_per_check": args.traffic,
        "champion_floor": args.champion_floor,
        "by_traffic": by_traffic,
    }
    args.json.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
