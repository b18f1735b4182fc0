"""The demo's numbers from what it saw: the summary, the counterfactual models (the first
champion frozen, an oracle trained on the drifted rows), the timeline and the plot."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cli.demo.plan import DemoPlan
from cli.demo.state import LoopState, Quality, Served, rounded, shown_value
from driftloop.settings import Settings


def summarise(
    plan: DemoPlan,
    settings: Settings,
    state: LoopState,
    first: str | None,
    onset: float,
    onset_index: int,
    concept: float,
    serving_at: float | None,
    estimator: Estimator | None = None,
) -> dict[str, Any]:
    """The issue's summary keys; times are seconds since the traffic started."""
    served, quality = state.served, state.quality
    monitor_retrains = [r["t"] for r in state.retrains if r["trigger"] in MONITOR_TRIGGERS]
    alarm = next((a for a in sorted(state.alarms, key=lambda a: a["t"]) if a["t"] >= onset), None)
    alarmed = [] if alarm is None else [alarm["t"]]
    signals = state.detections + monitor_retrains + alarmed
    detected = min((t for t in signals if t >= onset), default=None)
    delay = None
    if detected is not None:
        delay = sum(1 for s in served[onset_index:] if s.t + plan.feedback_delay_s <= detected)
    before = [s for s in served[:onset_index] if s.version == first and s.t >= onset - 60]
    end = serving_at if serving_at is not None else state.now()
    during = [s for s in served[onset_index:] if s.t < end]
    buckets = [
        quality.of([s for s in during if t <= s.t < t + 10]) for t in np.arange(onset, end, 10.0)
    ]
    post = [s for s in served[onset_index:] if s.t >= concept]
    if serving_at is not None:
        after = [s for s in post if s.t >= serving_at]
        learn = [s for s in post if s.t < serving_at]
    else:  # never recovered: judge the last third of the drifted traffic
        cut = len(post) * 2 // 3
        learn, after = post[:cut], post[cut:]
    static, oracle = _counterfactuals(plan, settings, quality, first, learn, after)
    versions = [e.version for e in state.events if e.name.endswith("serves as @champion")]
    first_retrain = next((r for r in state.retrains if r["t"] >= onset), None)

    def unchanged(s: Served) -> bool:  # answered by the champion from before the drift
        return first is None or s.version == first

    return {
        "drift_onset_s": round(onset, 1),
        "detected_at_s": None if detected is None else round(detected, 1),
        "detection_delay_samples": delay,
        "new_champion_serving_at_s": None if serving_at is None else round(serving_at, 1),
        quality.metric: {
            "before": rounded(quality.of(before)),
            quality.worst_key: rounded(quality.worst([b for b in buckets if b is not None])),
            "after": rounded(
                quality.of([s for s in after if s.version == state.champion])
                if serving_at is not None
                else quality.of(after)
            ),
            "static_after": static,
            "oracle_after": oracle,
        },
        # Realized and label-free accuracy of the first champion in each phase: the
        # estimate follows the covariate shift and misses the concept change.
        "estimated_accuracy": None
        if estimator is None
        else {
            phase: {"realized": rounded(quality.of(rows)), "estimated": estimator.of(rows)}
            for phase, rows in (
                ("before", before),
                ("covariate_shift", [s for s in during if s.t < concept and unchanged(s)]),
                ("concept_drift", [s for s in learn if unchanged(s)]),
            )
        },
        "detected_by": _detected_by(plan, state, onset, concept, alarm, first_retrain, delay),
        # What the monitors, detectors and the estimate raised on calm traffic, before any
        # drift was injected.
        "false_alarms": false_alarms(state, until=onset),
        "detector_alarms": len(state.alarms),
        "retrains": retrains_by_trigger(state),
        "rollback_s": None,
        "rollback_requests": None,
        "canary_samples_to_decision": None,
        "events": [e.as_dict() for e in sorted(state.events, key=lambda e: e.t)],
        "champion_versions": [v for v in versions if v is not None],
    }


MONITOR_TRIGGERS = ("drift", "quality")  # the retrains monitors ask for (not manual, drill)
ESTIMATED_REASON = "accuracy estimated without labels"  # a retrain for an estimated drop


def _detected_by(
    plan: DemoPlan,
    state: LoopState,
    onset: float,
    concept: float,
    alarm: dict[str, Any] | None,
    first_retrain: dict[str, Any] | None,
    delay: int | None,
) -> dict[str, Any] | None:
    """The first streaming detector to fire after onset, else the first retrain's trigger.

    A detector counts its own labelled samples from the change it estimates to its alarm;
    `labels_sent_since_change` is the demo's count from the true (concept) change, every
    label posted by then (an upper bound on what the detector could have read).
    """
    if alarm is not None:
        sent = sum(
            1 for s in state.served if concept <= s.t and s.t + plan.feedback_delay_s <= alarm["t"]
        )
        return {
            "source": "error_stream_sensor",
            "detector": alarm["detector"],
            "labelled_samples": alarm["samples_after_change"],
            "labels_sent_since_change": sent,
            "t": alarm["t"],
            "s_after_onset": round(alarm["t"] - onset, 1),
            "change_estimated_at_t": alarm["change_t"],
            "change_at_t": round(concept, 1),
        }
    if first_retrain is None:
        return None
    return {
        "source": "monitor",
        "trigger": first_retrain["trigger"],
        "reason": first_retrain["reason"],
        "labelled_samples_after_onset": delay,
    }


def false_alarms(state: LoopState, until: float | None = None) -> dict[str, int]:
    """What the loop raised (before `until`, if given), counted once per cause: each
    detector alarm, each estimated-drop alert, and each monitor retrain that neither stands
    for (a drift verdict, a quality drop at a change point, the live metric under the
    holdout). `total` sums them."""

    def before(t: float) -> bool:
        return until is None or t < until

    retrains = [
        r
        for r in state.retrains
        if before(r["t"])
        and r["trigger"] in MONITOR_TRIGGERS
        and not r.get("detector")
        and not str(r["reason"]).startswith(ESTIMATED_REASON)
    ]
    counts = {
        "detector_alarms": sum(1 for a in state.alarms if before(a["t"])),
        "estimated_drop_alerts": sum(1 for t in state.estimated_alerts if before(t)),
        "monitor_retrains": len(retrains),
    }
    return {**counts, "total": sum(counts.values())}


def canary_outcomes(state: LoopState) -> dict[str, dict[str, Any]]:
    """Each finished canary by challenger version: its verdict, the labelled samples per
    arm the deciding record judged, how many checks it took, and the requests the
    challenger answered until then."""
    outcomes: dict[str, dict[str, Any]] = {}
    for record in sorted(state.canary, key=lambda r: r["t"]):
        version = record.get("challenger_version")
        if version is None or version in outcomes:
            continue
        if record["verdict"] not in ("promote", "rollback"):
            continue
        judged = [
            r
            for r in state.canary
            if r.get("challenger_version") == version and "challenger_n" in r
        ]
        outcomes[version] = {
            "verdict": record["verdict"],
            "challenger_n": record.get("challenger_n"),
            "champion_n": record.get("champion_n"),
            "checks": len(judged),
            "requests": sum(1 for s in state.served if s.version == version and s.t <= record["t"]),
            "t": record["t"],
        }
    return outcomes


def retrains_by_trigger(state: LoopState) -> dict[str, int]:
    return dict(Counter(r["trigger"] for r in state.retrains))


def summarise_stationary(state: LoopState, first: str | None) -> dict[str, Any]:
    """A run on calm traffic only: every retrain and alarm is a false one; per hour of
    traffic so that runs of any length compare."""
    served, quality = state.served, state.quality
    hours = (served[-1].t - served[0].t) / 3600 if len(served) > 1 else 0.0
    alarms = false_alarms(state)
    versions = [e.version for e in state.events if e.name.endswith("serves as @champion")]
    return {
        "mode": "stationary",
        "minutes": round(hours * 60, 1),
        "requests": len(served),
        quality.metric: rounded(quality.of([s for s in served if s.version == first])),
        "retrains": retrains_by_trigger(state),
        "false_alarms": alarms,
        "alarms_per_hour": round(alarms["total"] / hours, 2) if hours else None,
        "detector_alarms": len(state.alarms),
        "drift_verdicts_confirmed": len(state.detections),
        "events": [e.as_dict() for e in sorted(state.events, key=lambda e: e.t)],
        "champion_versions": [v for v in versions if v is not None],
    }


class Estimator:
    """Label-free accuracy over answered requests, each row by the calibration registered
    with its version (`driftloop.estimation`), as the monitor computes it."""

    def __init__(self, calibration_of: Callable[[str], np.ndarray | None]) -> None:
        self.calibration_of = calibration_of
        self.calibrations: dict[str, np.ndarray | None] = {}

    @classmethod
    def from_registry(cls, settings: Settings) -> Estimator:
        from driftloop.estimation import TAG_CALIBRATION, parse_calibration
        from driftloop.registry import Registry, configure_tracking

        configure_tracking(settings)
        registry = Registry(settings.mlflow_tracking_uri, settings.model_name)
        return cls(lambda v: parse_calibration(registry.version(v).tags.get(TAG_CALIBRATION)))

    def of(self, served: Sequence[Served]) -> float | None:
        """Mean calibrated confidence over `served` (each row by its version's map); None
        with fewer calibrated rows than the monitor needs."""
        from driftloop.estimation import GRID, MIN_ESTIMATE_ROWS

        calibrated = []
        for s in served:
            if s.version not in self.calibrations:
                self.calibrations[s.version] = self.calibration_of(s.version)
            calibration = self.calibrations[s.version]
            if calibration is not None and s.confidence is not None:
                calibrated.append(float(np.interp(s.confidence, GRID, calibration)))
        return rounded(float(np.mean(calibrated))) if len(calibrated) >= MIN_ESTIMATE_ROWS else None


def _counterfactuals(
    plan: DemoPlan,
    settings: Settings,
    quality: Quality,
    first: str | None,
    learn: list[Served],
    after: list[Served],
) -> tuple[float | None, float | None]:
    """The first champion frozen (static) and a model searched on post-drift rows (oracle),
    both scored in the task's metric on the same post-recovery traffic."""
    if not after or first is None:
        return None, None
    from driftloop.data import BATCH_COLUMN, build_training_set
    from driftloop.hpo import run_search
    from driftloop.registry import Registry, configure_tracking, ensure_experiment
    from driftloop.schema import load_schema
    from driftloop.training import TRUSTED_TYPES, limited_threads, make_model

    budget = settings.model_copy(update={"n_trials": plan.trials, "cv_folds": plan.cv_folds})
    configure_tracking(budget)
    schema = load_schema(budget.schema_path)
    assert schema is not None
    x_after = pd.DataFrame.from_records([s.features for s in after])[schema.feature_names]
    y_after = np.array([s.label for s in after])
    registry = Registry(budget.mlflow_tracking_uri, budget.model_name)
    static_model = registry.load_verified(first, TRUSTED_TYPES)
    static = quality.score(y_after, static_model.predict(x_after))
    oracle = None
    if plan.oracle and len(learn) >= 200:
        rows = pd.DataFrame.from_records([{**s.features, schema.target: s.label} for s in learn])
        rows[BATCH_COLUMN] = "oracle"
        training = build_training_set(rows, schema, budget.holdout_fraction, budget.seed)
        experiment = ensure_experiment(budget, f"{budget.model_name}-oracle")
        search = run_search(training, budget, experiment, {"driftloop.trigger": "oracle"}, print)
        with limited_threads(budget.train_threads):
            model = make_model(search.best_params, schema, budget.seed).fit(
                *training.xy(training.train)
            )
        oracle = quality.score(y_after, model.predict(x_after))
    return rounded(static), rounded(oracle)


def print_timeline(state: LoopState, out: Callable[[str], None]) -> None:
    out("\ntimeline")
    live = "live acc" if state.quality.metric == "accuracy" else f"live {state.quality.metric}"
    out(f"{'t (s)':>7}  {'version':>7}  {live:>9}  event")
    for event in sorted(state.events, key=lambda e: e.t):  # alarms are dated by their tick
        version = ("v" + event.version) if event.version else "-"
        out(f"{event.t:7.1f}  {version:>7}  {shown_value(event.value):>9}  {event.name}")


VERDICT_COLOURS = {"promote": "tab:green", "rollback": "tab:red", "advance": "tab:blue"}


def plot_metric(state: LoopState, path: Path, estimator: Estimator | None = None) -> None:
    """The live metric in 5 s buckets with every event as a labelled vertical line, and for
    a classifier the accuracy its calibrated confidence estimates without labels; the
    detectors' alarms in purple; below, each canary check's gain and interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    served, quality = state.served, state.quality
    if not served:
        return
    end = served[-1].t
    times, values = [], []
    for start in np.arange(0, end, 5.0):
        value = quality.of([s for s in served if start <= s.t < start + 5])
        if value is not None:
            times.append(start + 2.5)
            values.append(value)
    metric = quality.metric
    checks = [r for r in state.canary if "difference" in r and "ci_low" in r and "ci_high" in r]
    if checks:
        fig, (ax, evidence) = plt.subplots(
            2, 1, figsize=(12, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
        )
        _plot_canary(evidence, checks)
    else:
        fig, ax = plt.subplots(figsize=(12, 5))
    ax.plot(times, values, color="black", linewidth=1.2, label=f"live {metric} (5 s buckets)")
    if not quality.regression and estimator is not None:
        points = [
            (start + 5.0, estimator.of([s for s in served if start <= s.t < start + 10]))
            for start in np.arange(0, end, 5.0)
        ]
        shown = [(t, v) for t, v in points if v is not None]
        if shown:
            ax.plot(
                *zip(*shown, strict=True),
                color="tab:blue",
                linestyle="--",
                linewidth=1.0,
                label="estimated accuracy, no labels (10 s windows)",
            )
    notable = (
        "drift injected",
        "serves as @champion",
        "training run requested",
        "rolled back",
        "error-stream alarm",
        "shift injected",
    )
    for event in state.events:
        if any(word in event.name for word in notable):
            colour = "tab:purple" if event.name.startswith("error-stream") else "tab:red"
            ax.axvline(event.t, color=colour, alpha=0.4, linestyle="--")
            # x in data, y in axes units: the labels sit at the bottom on either scale.
            ax.text(
                event.t,
                0.02,
                event.name[:40],
                rotation=90,
                fontsize=7,
                va="bottom",
                transform=ax.get_xaxis_transform(),
            )
    if quality.regression:
        ax.set_ylim(0, max(values) * 1.05)
    else:
        ax.set_ylim(0, 1.02)
    (evidence if checks else ax).set_xlabel("seconds since traffic started")
    ax.set_ylabel(metric)
    ax.set_title(f"driftloop demo: live {metric} and what the loop did")
    ax.legend(loc="upper right" if quality.regression else "lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_canary(ax: Any, checks: list[dict[str, Any]]) -> None:
    """Each canary check: the challenger's gain and its interval, coloured by verdict
    (grey: wait); the interval shrinks as evidence accumulates until it clears a side."""
    for record in checks:
        low, high = record["ci_low"], record["ci_high"]
        colour = VERDICT_COLOURS.get(record["verdict"], "tab:gray")
        ax.errorbar(
            record["t"],
            record["difference"],
            yerr=[[record["difference"] - low], [high - record["difference"]]],
            fmt="o",
            markersize=3,
            color=colour,
            capsize=2,
        )
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_ylabel("canary gain")
    ax.set_title(
        "canary checks: challenger's gain, interval (green promote, red rollback)", fontsize=8
    )
