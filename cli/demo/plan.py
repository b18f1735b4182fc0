"""The timings and budgets of one demo run, and the plans `driftloop demo` offers.

Only data: every other module of the demo reads a plan, none changes one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from driftloop.simulate import DemoTask


@dataclass(frozen=True)
class DemoPlan:
    """Timings and budgets of one demo run; `QUICK` must finish in < 10 min on 2 cores."""

    rows: int = 20_000  # the first champion's training rows
    trials: int = 12  # Optuna trials per training run (the oracle gets the same)
    cv_folds: int = 3
    requests_per_s: float = 50.0  # one application each
    feedback_delay_s: float = 3.0
    land_every_s: float = 30.0  # one ingest run per file: fewer, larger files keep up
    calm_s: float = 90.0  # traffic before the drift (the drill runs inside it)
    drill: bool = True
    drift: bool = True  # False: a stationary run, calm traffic only
    concept_after_s: float = 5.0  # concept drift follows covariate shift: one episode
    recover_timeout_s: float = 420.0  # give up waiting for a new champion after this
    after_s: float = 60.0  # traffic measured once the new champion serves
    oracle: bool = True
    log_window_s: int = 5
    monitor_window_s: int = 60
    retrain_cooldown_s: int = 300  # longer than retrain + canary: one retrain per episode
    retrain_min_rows: int = 3000  # labelled rows since the change before retraining
    canary_min_samples: int = 40
    canary_steps: tuple[float, ...] = (0.25, 1.0)
    seed: int = 7
    task: DemoTask = "classification"


FULL = DemoPlan()
# Where the 172 s from onset to the new champion went on 2026-12-01 20:08 (idle machine):
# the CUSUM alarm ~20 s after the change, then 89 s waiting for 3,000 rows in files landed
# wholly after the change (a file every 30 s, each ingest run queued 6-12 s), then 57 s of
# retrain and canary. 1,200 rows are one whole file after the change, not two: a 30 s file
# held 1,460 rows on a loaded machine (2026-12-01 22:06), one short of 1,500. Files every
# 10 s were tried (21:54, load average 25-30): one ingest run per file, ~60 s each under
# that load, 44 runs queued and the retrain never got its rows; a file every 30 s keeps
# the ingest runs to two a minute. On 2026-12-02 00:42-01:00 (quiet, load average 1-3),
# with the training run starting the canary itself, a file every 20 s and 1,000 rows (one
# whole file after the change) served the new champion 101.6, 114.7 and 128.8 s after onset.
QUICK = replace(
    FULL,
    rows=10_000,
    trials=6,
    cv_folds=2,
    calm_s=60.0,
    after_s=40.0,
    land_every_s=20.0,
    retrain_min_rows=1000,
)
# Calm traffic only, for `calm_s` (`--minutes`): does the loop retrain or alarm on noise?
STATIONARY = replace(QUICK, drill=False, drift=False, oracle=False, calm_s=20 * 60.0)
