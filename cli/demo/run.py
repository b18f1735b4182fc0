"""The demo run: a fresh home, the servers, a first champion, the calm phase with the
drill, the drift phase, then the report; every server stopped on the way out."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from cli.demo.drill import BAD_TRAINING
from cli.demo.observer import Watcher
from cli.demo.plan import DemoPlan
from cli.demo.report import (
    Estimator,
    canary_outcomes,
    plot_metric,
    print_timeline,
    summarise,
    summarise_stationary,
)
from cli.demo.state import LoopState, Quality, shown_value
from cli.demo.traffic import Traffic
from driftloop.settings import PROJECT_ROOT, Settings
from driftloop.simulate import stream_for, write_batches
from driftloop.supervisor import Supervisor, preferred_port, services


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def child_env(home: Path, plan: DemoPlan, ports: dict[str, int], admin_key: str) -> dict[str, str]:
    """Fast settings for every child: few trials, short windows, canary promotion."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLOOP_")}
    if plan.task == "regression":  # stated, not inferred: the demo's summary is in RMSE
        env["DRIFTLOOP_TASK"] = "regression"
    env.update(
        {
            "DRIFTLOOP_HOME": str(home),
            "DAGSTER_HOME": str(home / "dagster"),
            "DRIFTLOOP_N_TRIALS": str(plan.trials),
            "DRIFTLOOP_CV_FOLDS": str(plan.cv_folds),
            "DRIFTLOOP_MIN_ROWS": "50",
            "DRIFTLOOP_SEED": str(plan.seed),
            # The demo's thresholds and summary (before/during/after) are in its live
            # metric; the simulated loans (18 % approved) would default to roc_auc.
            "DRIFTLOOP_METRIC": Quality.for_task(plan.task).metric,
            "DRIFTLOOP_PROMOTION_POLICY": "canary",
            "DRIFTLOOP_PREDICTION_LOG_WINDOW_S": str(plan.log_window_s),
            "DRIFTLOOP_MONITOR_WINDOW_S": str(plan.monitor_window_s),
            "DRIFTLOOP_MONITOR_MIN_ROWS": "100",
            "DRIFTLOOP_RETRAIN_COOLDOWN_S": str(plan.retrain_cooldown_s),
            "DRIFTLOOP_RETRAIN_MIN_ROWS": str(plan.retrain_min_rows),
            "DRIFTLOOP_CANARY_MIN_SAMPLES": str(plan.canary_min_samples),
            "DRIFTLOOP_CANARY_STEPS": json.dumps(list(plan.canary_steps)),
            # Two shared cores: queueing, not the model, dominates latency; judge quality.
            "DRIFTLOOP_CANARY_MAX_P99_MS": "60000",
            "DRIFTLOOP_LANDING_SENSOR_INTERVAL_S": "5",
            "DRIFTLOOP_CANARY_SENSOR_INTERVAL_S": "5",
            "DRIFTLOOP_MONITOR_SENSOR_INTERVAL_S": "5",
            "DRIFTLOOP_ADMIN_API_KEY": admin_key,
            "DRIFTLOOP_SERVE_PORT": str(ports["serve"]),
            "DRIFTLOOP_SERVING_URL": f"http://127.0.0.1:{ports['serve']}",
            "DRIFTLOOP_DAGSTER_PORT": str(ports["dagster"]),
            "DRIFTLOOP_MLFLOW_PORT": str(ports["mlflow"]),
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def run_demo(
    plan: DemoPlan,
    base: Settings,
    json_path: Path | None = None,
    keep_ui: bool = False,
    out: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the loop end to end; returns the summary (also written to `json_path`)."""
    home = base.home / "demo" / datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    (home / "dagster").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(PROJECT_ROOT / "dagster.yaml", home / "dagster" / "dagster.yaml")
    ports = {
        "serve": preferred_port(base.serve_port),
        "dagster": preferred_port(base.dagster_port),
        "mlflow": preferred_port(base.mlflow_port),
    }
    env = child_env(home, plan, ports, secrets.token_urlsafe(32))
    settings = Settings(home=home).model_copy(
        update={
            "dagster_port": ports["dagster"],
            "mlflow_port": ports["mlflow"],
            "serve_port": ports["serve"],
        }
    )
    bin_dir = Path(sys.executable).parent
    children = Supervisor(logs, env)
    if threading.current_thread() is threading.main_thread():
        # The servers run in sessions of their own, out of reach of a signal to ours: a
        # SIGTERM (a CI cancel, `kill`) must still reach the `finally` that stops them.
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    state = LoopState(started=time.monotonic(), quality=Quality.for_task(plan.task))
    out(f"demo home {home} (logs in {logs}), task {plan.task}")
    try:
        return _loop(plan, settings, env, bin_dir, children, state, json_path, keep_ui, out)
    finally:
        children.stop()


def _loop(
    plan: DemoPlan,
    settings: Settings,
    env: dict[str, str],
    bin_dir: Path,
    children: Supervisor,
    state: LoopState,
    json_path: Path | None,
    keep_ui: bool,
    out: Callable[[str], None],
) -> dict[str, Any]:
    home = settings.home
    servers = services(settings, home / "dagster")
    urls = {name: server.url for name, server in servers.items()}
    children.start_service(servers["mlflow"])
    stream = stream_for(plan.task, seed=plan.seed)
    out(f"[setup] simulating {plan.rows} {stream.rows_are} and training the first champion")
    write_batches(stream, plan.rows, 5_000, settings.landing, settings.target_column)
    started = time.monotonic()
    trained = subprocess.run(
        [str(bin_dir / "driftloop"), "train"], env=env, cwd=home, capture_output=True, text=True
    )
    (home / "logs" / "first-train.log").write_text(trained.stdout + trained.stderr)
    if trained.returncode != 0:
        raise RuntimeError(f"first training failed: {trained.stderr.strip()[-300:]}")
    out(f"[setup] first champion trained in {time.monotonic() - started:.0f}s")
    drill_proc = None
    if plan.drill:  # trains while the servers start; the canary takes it from there
        out(f"[setup] drill: training a challenger on {BAD_TRAINING[plan.task]}")
        drill_proc = subprocess.Popen(
            [
                str(bin_dir / "python"),
                "-c",
                "from cli.demo.drill import register_bad_challenger; register_bad_challenger()",
            ],
            env=env,
            cwd=home,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    children.start_service(servers["dagster"])
    children.start_service(servers["serve"])
    out("[setup] starting Ray Serve, the Dagster webserver + daemon and the MLflow UI")
    children.wait_healthy("serve")
    children.wait_healthy("dagster")
    state.started = time.monotonic()
    watcher = Watcher(state, urls["serve"], urls["dagster"], env["DRIFTLOOP_ADMIN_API_KEY"])
    # Healthy is not yet serving the champion on a busy machine (measured: 6 s later); the
    # first champion must be known, or any champion would count as the recovery.
    deadline = time.monotonic() + 120
    while state.champion is None and time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
            watcher.poll_serving()
        if state.champion is None:
            time.sleep(1)
    watcher.poll_runs(prime=True)
    watcher.poll_drift(prime=True)
    traffic = Traffic(state, urls["serve"], plan, settings, settings.model_name)
    traffic.start()
    watcher.start()
    first = state.champion
    state.record("traffic started (calm phase)")
    try:
        drill = _calm_phase(plan, state, watcher, drill_proc, home, out)
        if plan.drift:
            onset, onset_index, concept, serving_at = _drift_phase(
                plan, state, traffic, (first, drill["version"]), out
            )
    finally:
        traffic.stop_event.set()
        traffic.join(timeout=30)
        watcher.stop_event.set()
        watcher.join(timeout=30)
    for poll in (watcher.poll_detectors, watcher.poll_runs, watcher.poll_canary):
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError, TypeError):
            poll()  # what happened in the last seconds of traffic
    estimator = None if state.quality.regression else Estimator.from_registry(settings)
    if not plan.drift:
        summary = summarise_stationary(state, first)
    else:
        summary = summarise(
            plan, settings, state, first, onset, onset_index, concept, serving_at, estimator
        )
        summary["rollback_s"], summary["rollback_requests"] = drill["seconds"], drill["requests"]
        outcomes = canary_outcomes(state)
        summary["canary_samples_to_decision"] = {
            "drill": outcomes.get(drill["version"] or ""),
            "recovery": outcomes.get(state.champion or "") if serving_at is not None else None,
        }
    print_timeline(state, out)
    plot = home / f"{state.quality.metric}.png"
    plot_metric(state, plot, estimator)
    out(f"plot: {plot}")
    target = json_path or home / "summary.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(summary, indent=2))
    out(f"summary: {target}")
    out(json.dumps({k: v for k, v in summary.items() if k != "events"}, indent=2))
    if traffic.errors:
        causes = ", ".join(f"{cause}: {n}" for cause, n in traffic.errors.most_common())
        out(f"note: {traffic.errors.total()} requests or feedback posts failed ({causes})")
    if keep_ui:
        out(f"Dagster UI: {urls['dagster']}\nMLflow UI: {urls['mlflow']}\nserving: {urls['serve']}")
        out("Ctrl-C stops everything.")
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return summary


def _drift_phase(
    plan: DemoPlan,
    state: LoopState,
    traffic: Traffic,
    before: tuple[str | None, str | None],
    out: Callable[[str], None],
) -> tuple[float, int, float, float | None]:
    """Covariate shift, then concept drift; wait for a champion that is neither the first
    nor the drill's (`before`), then measure it. Returns onset, its request index, the
    concept change and when the new champion served (None: it never did)."""
    state.record("covariate shift injected")
    onset = state.now()
    onset_index = len(state.served)
    traffic.inject("covariate")
    _progress_until(state, lambda: state.now() >= onset + plan.concept_after_s, out, 60)
    traffic.inject("concept")
    state.record(f"concept drift injected ({traffic.stream.concept_change})")
    concept = state.now()
    recovered = _progress_until(
        state, lambda: state.champion not in before, out, plan.recover_timeout_s
    )
    serving_at = state.now() if recovered else None
    if serving_at is not None:
        state.record("new champion serves; measuring recovery")
        _progress_until(state, lambda: state.now() >= serving_at + plan.after_s, out, 3600)
    return onset, onset_index, concept, serving_at


def _progress_until(
    state: LoopState, done: Callable[[], bool], out: Callable[[str], None], timeout_s: float
) -> bool:
    """Wait for `done`, printing a status line every 10 s; False on timeout."""
    deadline = time.monotonic() + timeout_s
    last = 0.0
    while time.monotonic() < deadline:
        if done():
            return True
        if time.monotonic() - last >= 10:
            last = time.monotonic()
            live = shown_value(state.live())
            canary = f", canary v{state.challenger} {state.weight:.0%}" if state.challenger else ""
            out(
                f"[{state.now():6.1f}s] champion v{state.champion}{canary}, live "
                f"{state.quality.metric} {live}, {len(state.served)} requests"
            )
        time.sleep(0.5)
    return False


def _calm_phase(
    plan: DemoPlan,
    state: LoopState,
    watcher: Watcher,
    drill_proc: subprocess.Popen[str] | None,
    home: Path,
    out: Callable[[str], None],
) -> dict[str, Any]:
    """Calm traffic; with the drill, a bad challenger the canary must roll back."""
    calm_end = state.now() + plan.calm_s
    drill: dict[str, Any] = {"version": None, "seconds": None, "requests": None}
    if drill_proc is not None:
        made = drill_proc.communicate()
        (home / "logs" / "drill.log").write_text(made[0] + made[1])
        if drill_proc.returncode != 0:
            out(f"drill skipped: {made[1].strip()[-200:]}")
        else:
            bad = made[0].strip().splitlines()[-1]
            drill["version"] = bad
            state.record(f"drill: v{bad} registered as @challenger (gate opened by configuration)")
            gone = _progress_until(
                state,
                lambda: bad in watcher.weight_zero_at and bad != state.challenger,
                out,
                240,
            )
            first = state.first_answer.get(bad)
            if gone and first is not None:
                drill["seconds"] = round(watcher.weight_zero_at[bad] - first, 1)
                drill["requests"] = state.answers.get(bad, 0)
                state.record(
                    f"drill: v{bad} rolled back {drill['seconds']}s after its first canary "
                    f"request, having answered {drill['requests']} requests"
                )
            else:
                out("drill: the bad challenger was not rolled back in time")
    _progress_until(state, lambda: state.now() >= calm_end, out, plan.calm_s + 60)
    return drill
