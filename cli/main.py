"""The `driftloop` command line.

Every error a user can cause ends as one sentence on stderr and exit code 2;
`DRIFTLOOP_DEBUG=1` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from driftloop.settings import Settings, load_settings, redacted

if TYPE_CHECKING:
    from driftloop.registry import Registry
    from driftloop.schema import DatasetSchema
    from driftloop.supervisor import Service, Supervisor


class UserError(Exception):
    """Something the user can fix; printed as one sentence."""


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # A person is waiting: an unreachable tracking server should fail in seconds, not
    # after MLflow's default minutes of retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    settings = None
    try:
        settings = load_settings()
        return args.command(settings, args) or 0
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # the CLI's one place that turns errors into a sentence
        if os.environ.get("DRIFTLOOP_DEBUG"):
            raise
        message = _one_line(error)
        if settings is not None and _UNREACHABLE.search(str(error)):
            message = f"cannot reach the MLflow store at {redacted(settings.mlflow_tracking_uri)}"
        print(f"driftloop: {message}", file=sys.stderr)
        return 2


_UNREACHABLE = re.compile(r"Connection refused|Max retries exceeded|Failed to establish")
STATUS_AUDIT_ENTRIES = 10  # the newest admin actions `status` shows (all: the Dagster UI)


def _one_line(error: Exception) -> str:
    # Ray re-raises an actor's error wrapped, its first line only naming the actor
    # (`ray::HAProxyManager.ready()`): the error inside is the cause.
    while type(error).__module__.startswith("ray.") and isinstance(
        getattr(error, "cause", None), Exception
    ):
        error = error.cause
    text = str(error).strip().splitlines()
    message = text[0] if text else type(error).__name__
    if "validation error" in message and len(text) > 2:  # pydantic: say which setting
        message = f"bad configuration: {text[1].strip()} {text[2].strip()}"
    alert = next((line for line in text if line.startswith("[ALERT]")), None)
    if alert:  # HAProxy's startup log: its first alert says what failed
        message = f"{message.split(':')[0]}: {alert.split(' : ', 1)[-1]}"
    return message


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="driftloop", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    simulate = commands.add_parser("simulate", help="write simulated labelled batches")
    simulate.add_argument("--rows", type=int, default=20_000)
    simulate.add_argument("--batch-rows", type=int, default=5_000)
    simulate.add_argument("--format", choices=["parquet", "csv"], default="parquet")
    simulate.add_argument("--seed", type=int, default=7)
    simulate.add_argument("--covariate-shift-at", type=int, metavar="ROW")
    simulate.add_argument("--concept-drift-at", type=int, metavar="ROW")
    simulate.add_argument("--drift-function", type=int, default=None, metavar="0-9")
    simulate.set_defaults(command=cmd_simulate)

    train = commands.add_parser("train", help="ingest landed files and run the training job")
    train.add_argument("--trials", type=int, help="Optuna trials (default DRIFTLOOP_N_TRIALS)")
    train.set_defaults(command=cmd_train)

    status = commands.add_parser("status", help="show the registry aliases and the last runs")
    status.add_argument("--json", action="store_true")
    status.set_defaults(command=cmd_status)

    up = commands.add_parser(
        "up",
        help="run the whole loop on your data: MLflow, Dagster (sensors, schedules), serving",
        description=UP_DESCRIPTION,
        epilog=UP_SETTINGS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    up.set_defaults(command=cmd_up)

    ui = commands.add_parser(
        "ui", help="start the Dagster (webserver + daemon) and MLflow UIs, without serving"
    )
    ui.set_defaults(command=cmd_ui)

    promote = commands.add_parser("promote", help="make VERSION the champion")
    promote.add_argument("version")
    promote.set_defaults(command=cmd_promote)

    rollback = commands.add_parser("rollback", help="move @champion back to @previous")
    rollback.set_defaults(command=cmd_rollback)

    demo = commands.add_parser(
        "demo", help="the closed loop: serve, drift, detect, retrain, canary, recover"
    )
    demo.add_argument("--quick", action="store_true", help="short timings (< 10 min)")
    demo.add_argument(
        "--stationary",
        action="store_true",
        help="calm traffic only, no drill, no drift: count false retrains and alarms",
    )
    demo.add_argument("--minutes", type=float, default=20.0, help="--stationary's traffic")
    demo.add_argument("--json", type=Path, metavar="PATH", help="write the summary here")
    demo.add_argument("--rows", type=int, help="the first champion's training rows")
    demo.add_argument("--trials", type=int)
    demo.add_argument("--no-ui", action="store_true", help="exit instead of keeping the UIs")
    demo.add_argument(
        "--classic", action="store_true", help="only simulate, train, show status and open the UIs"
    )
    demo.add_argument(
        "--task",
        choices=("classification", "regression"),
        default="classification",
        help="loan approvals scored in accuracy, or a Friedman regression stream in RMSE",
    )
    demo.set_defaults(command=cmd_demo)

    serve = commands.add_parser("serve", help="serve @champion on Ray Serve at 127.0.0.1")
    serve.add_argument("--replicas", type=int, help="default DRIFTLOOP_SERVE_REPLICAS")
    serve.add_argument("--canary-weight", type=float, help="default DRIFTLOOP_CANARY_WEIGHT")
    serve.add_argument("--no-haproxy", action="store_true", help="Ray's default proxy instead")
    serve.set_defaults(command=cmd_serve)

    bench = commands.add_parser("bench", help="benchmarks").add_subparsers(
        required=True, metavar="TARGET"
    )
    bench_serve = bench.add_parser("serve", help="serving vs mlflow models serve vs FastAPI")
    bench_serve.add_argument("--quick", action="store_true", help="5 s per measurement")
    bench_serve.add_argument("--json", type=Path, required=True, metavar="PATH")
    bench_serve.add_argument(
        "--replicas", type=int, default=2, help="replicas of ours (mlflow and bare: 2 workers)"
    )
    bench_serve.set_defaults(command=cmd_bench_serve)
    bench_chaos = bench.add_parser(
        "chaos",
        help="availability of 2 replicas under load while replicas, HAProxy, the "
        "Serve controller and MLflow are killed and aliases move",
    )
    bench_chaos.add_argument("--quick", action="store_true", help="each fault once, ~2 min")
    bench_chaos.add_argument("--minutes", type=float, help="soak length (default 10; 2 quick)")
    bench_chaos.add_argument("--json", type=Path, required=True, metavar="PATH")
    # Four trials: the soak measures serving, not the search (`cmd_train` passes them on).
    bench_chaos.set_defaults(command=cmd_bench_chaos, trials=4)
    bench_scale = bench.add_parser(
        "scale", help="time and peak RSS of every stage at 10k, 100k and 1M rows"
    )
    bench_scale.add_argument("--quick", action="store_true", help="stop at 100k rows")
    bench_scale.add_argument("--json", type=Path, required=True, metavar="PATH")
    bench_scale.set_defaults(command=cmd_bench_scale)
    return parser


def cmd_simulate(settings: Settings, args: argparse.Namespace) -> int:
    from driftloop.simulate import DEFAULT_DRIFT_FUNCTION, DriftPlan, LoanStream, write_batches

    if args.rows <= 0 or args.batch_rows <= 0:
        raise UserError("--rows and --batch-rows must be positive")
    plan = DriftPlan(
        covariate_shift_at=args.covariate_shift_at,
        concept_drift_at=args.concept_drift_at,
        drift_function=args.drift_function
        if args.drift_function is not None
        else DEFAULT_DRIFT_FUNCTION,
    )
    stream = LoanStream(seed=args.seed, plan=plan)
    names = write_batches(
        stream, args.rows, args.batch_rows, settings.landing, settings.target_column, args.format
    )
    print(f"wrote {args.rows} rows in {len(names)} files to {settings.landing}")
    return 0


def cmd_train(settings: Settings, args: argparse.Namespace) -> int:
    import dagster as dg

    from driftloop.data import BatchStore
    from pipelines.launch import ingest_pending, prepare_dagster_home, run_failure, run_training

    prepare_dagster_home(settings)
    with dg.DagsterInstance.get() as instance:
        started = time.perf_counter()
        ingest_pending(settings, instance, print)
        if not BatchStore(settings.batches).keys():
            raise UserError(
                f"no accepted data yet: put CSV or Parquet files with a {settings.target_column!r} "
                f"column into {settings.landing} (or run `driftloop simulate`)"
            )
        trials = getattr(args, "trials", None)
        print(f"training with {trials or settings.n_trials} trials, {settings.cv_folds}-fold CV …")
        result = run_training(settings, instance, trigger="cli", trials=trials)
        seconds = time.perf_counter() - started
        if not result.success:
            raise UserError(f"training run {result.run_id} failed: {run_failure(result)}")
        decision = result.output_for_node("promotion_gate")
        print(f"training run {result.run_id} finished in {seconds:.1f}s: {decision.summary()}")
    return 0


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    report = status_report(settings)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    for alias, info in report["aliases"].items():
        if info is None:
            print(f"@{alias:<10} -")
        else:
            semver = f" ({info['semver']})" if info["semver"] else ""
            print(
                f"@{alias:<10} v{info['version']}{semver}  "
                f"holdout {info['metric']} {info['holdout_score']}  "
                f"sha256 {(info['sha256'] or '')[:12]}  run {info['run_id']}"
            )
    dataset = report["dataset"]
    if dataset["task"] is None:
        print(f"dataset: none accepted yet (target column {dataset['target']!r})")
    else:
        values = "a number" if dataset["task"] == "regression" else f"labels {dataset['labels']}"
        print(
            f"dataset: {dataset['task']} target {dataset['target']!r} "
            f"({values}), metric {dataset['metric']}"
        )
        print(f"  features ({len(dataset['features'])}): {', '.join(dataset['features'])}")
        print(f"  id columns: {', '.join(dataset['id_columns']) or '-'}")
        print(f"  timestamp column: {dataset['timestamp_column'] or '-'}")
        for column in dataset["excluded"]:
            print(f"  excluded {column['name']!r} ({column['role']}): {column['reason']}")
    print(f"last ingest: {report['last_ingest']}")
    print(f"last run: {report['last_run']}")
    live = report["live_quality"]
    if live is not None:
        print(
            f"live quality ({live['at']}): v{live['version']} {live['metric']} {live['score']} "
            f"on {live['labelled']} labelled; estimated accuracy {live['estimated_accuracy']} "
            f"without labels (gap to realized {live['estimate_gap']}"
            f"{', estimated drop flagged' if live['estimated_drop_flagged'] else ''})"
        )
    audit = report["audit"]
    print(f"admin actions (newest {STATUS_AUDIT_ENTRIES}):" if audit else "admin actions: -")
    for entry in audit:
        who = f"{entry.get('role') or 'unknown'} key {entry.get('key_id') or '-'}"
        print(
            f"  {entry.get('at')}  {entry.get('action')} -> {entry.get('outcome')}  "
            f"{who} from {entry.get('client') or '-'}"
        )
    return 0


def status_report(settings: Settings) -> dict[str, Any]:
    from driftloop.audit import AuditTrail
    from driftloop.data import BatchStore
    from driftloop.registry import Registry, configure_tracking
    from driftloop.schema import load_schema

    configure_tracking(settings)
    registry = Registry(settings.mlflow_tracking_uri, settings.model_name)
    aliases = {}
    for alias, info in registry.aliases().items():
        aliases[alias] = (
            None
            if info is None
            else {
                "version": info.version,
                "semver": info.tags.get("driftloop.semver"),
                "run_id": info.run_id,
                "sha256": info.sha256,
                # Versions registered before the metric was chosen carry accuracy only.
                "metric": info.tags.get("driftloop.metric", "accuracy"),
                "holdout_score": _as_float(
                    info.tags.get("driftloop.holdout_score")
                    or info.tags.get("driftloop.holdout_accuracy")
                ),
                "holdout_accuracy": _as_float(info.tags.get("driftloop.holdout_accuracy")),
                "data_hash": info.tags.get("driftloop.data_hash"),
                "trigger": info.tags.get("driftloop.trigger"),
            }
        )
    schema = load_schema(settings.schema_path)
    keys = BatchStore(settings.batches).keys()
    audit = AuditTrail(settings.audit_log)
    last_ingest = None
    if keys:
        path = BatchStore(settings.batches).path(keys[-1])
        last_ingest = {
            "batch": keys[-1],
            "at": datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat(),
            "batches": len(keys),
        }
    return {
        "home": str(settings.home),
        "model_name": settings.model_name,
        "aliases": aliases,
        "dataset": _dataset(schema, settings),
        "last_ingest": last_ingest,
        "last_run": _last_run(settings),
        "live_quality": _live_quality(settings),
        "audit": [entry.fields for entry in audit.read(limit=STATUS_AUDIT_ENTRIES)],
    }


def _dataset(schema: DatasetSchema | None, settings: Settings) -> dict[str, Any]:
    """The schema in force: task, metric and the role of every column."""
    if schema is None:
        return {
            "target": settings.target_column,
            "task": None,
            "labels": [],
            "metric": settings.metric,
            "features": [],
            "id_columns": [],
            "timestamp_column": None,
            "excluded": [],
        }
    return {
        "target": schema.target,
        "task": schema.task,
        "labels": list(schema.labels),
        "metric": schema.metric,
        "features": schema.feature_names,
        "id_columns": list(schema.id_columns),
        "timestamp_column": schema.timestamp_column,
        "excluded": [{"name": c.name, "role": c.role, "reason": c.reason} for c in schema.excluded],
    }


def _as_float(value: str | None) -> float | None:
    return float(value) if value is not None else None


def _last_run(settings: Settings) -> dict[str, Any] | None:
    if not (settings.dagster_home / "dagster.yaml").exists():
        return None
    import dagster as dg

    from pipelines.launch import prepare_dagster_home

    prepare_dagster_home(settings)
    with dg.DagsterInstance.get() as instance:
        records = instance.get_run_records(limit=1)
        if not records:
            return None
        run = records[0].dagster_run
        return {
            "run_id": run.run_id,
            "job": run.job_name,
            "status": run.status.value,
            "at": records[0].create_timestamp.isoformat(),
        }


def _live_quality(settings: Settings) -> dict[str, Any] | None:
    """The newest live-quality run: the champion's realized metric beside the accuracy its
    calibrated confidence estimates without labels."""
    if not (settings.dagster_home / "dagster.yaml").exists():
        return None
    import dagster as dg

    from pipelines.launch import prepare_dagster_home

    prepare_dagster_home(settings)
    with dg.DagsterInstance.get() as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey("live_model_quality"))
    if event is None or event.asset_materialization is None:
        return None
    metadata = {key: value.value for key, value in event.asset_materialization.metadata.items()}
    version, metric = metadata.get("champion_version"), metadata.get("metric")
    return {
        "at": datetime.fromtimestamp(event.timestamp, UTC).isoformat(),
        "version": version,
        "metric": metric,
        "score": metadata.get(f"{metric}/v{version}"),
        "labelled": metadata.get(f"count/v{version}", 0),
        "estimated_accuracy": metadata.get("estimated_accuracy"),
        "estimate_gap": metadata.get(f"estimate_gap/v{version}"),
        "estimated_drop_flagged": bool(metadata.get("estimated_drop_flagged", False)),
    }


def cmd_promote(settings: Settings, args: argparse.Namespace) -> int:
    """Through the registry's one locked alias move; promoting the champion is a no-op."""
    from driftloop.registry import CHAMPION, Registry, RegistryError, configure_tracking

    configure_tracking(settings)
    registry = Registry(settings.mlflow_tracking_uri, settings.model_name)
    try:
        moved = registry.promote(args.version)
    except RegistryError as error:
        raise UserError(str(error)) from error
    if not moved.changed:
        print(f"v{args.version} is already @champion")
        return 0
    registry.set_tags(args.version, {"driftloop.decision.manual": "promoted by driftloop promote"})
    replaced = moved.before.get(CHAMPION)
    suffix = f" (v{replaced} is now @previous)" if replaced else ""
    print(f"v{args.version} is now @champion{suffix}")
    return 0


def cmd_rollback(settings: Settings, args: argparse.Namespace) -> int:
    """`@champion` back to `@previous`; the demoted version keeps no alias, so running it
    again cannot bring the rolled-back model back."""
    from driftloop.registry import CHAMPION, Registry, configure_tracking

    configure_tracking(settings)
    moved = Registry(settings.mlflow_tracking_uri, settings.model_name).rollback()
    restored, demoted = moved.after[CHAMPION], moved.before[CHAMPION]
    print(f"v{restored} is @champion again; v{demoted} (rolled back) holds no alias")
    return 0


UP_DESCRIPTION = """\
Run the whole loop on your own data, in one supervised command: the MLflow server, then
`dagster dev` (webserver + daemon: the landing sensor ingests new files, the monitors and
the canary sensor run, the nightly schedule retrains), then Ray Serve with @champion. Each
is health-checked before the next starts; one table shows where everything answers.

Without a @champion yet, serving waits: the other servers stay up, and serving starts as
soon as a first model is promoted (land files, then `driftloop train` or the `training` job
in the Dagster UI). Ctrl-C or SIGTERM stops every server; if one fails, `up` stops the rest
and prints the end of that server's log (all logs: <home>/logs/)."""

UP_SETTINGS = """\
settings (environment variables; `driftloop status` shows the data's schema):
  DRIFTLOOP_HOME               all state: stores, landing zone, logs (./.driftloop)
  DRIFTLOOP_LANDING_DIR        where your CSV/Parquet files land (<home>/landing, or s3://)
  DRIFTLOOP_TARGET_COLUMN      the label column of your files (label)
  DRIFTLOOP_TASK               auto (a numeric target with > 20 values is a regression),
                               classification, binary, multiclass, regression
  DRIFTLOOP_METRIC             primary metric: accuracy, balanced_accuracy, roc_auc, pr_auc,
                               f1, log_loss; rmse, mae, r2 (default from the first file)
  DRIFTLOOP_ID_COLUMNS         business id columns: never features, echoed by serving
  DRIFTLOOP_TIMESTAMP_COLUMN   the column that orders rows; never a feature
  DRIFTLOOP_IGNORE_COLUMNS     other columns that are not features
  DRIFTLOOP_PROMOTION_POLICY   auto (the gate promotes), manual, canary (live canary decides)
  DRIFTLOOP_ADMIN_API_KEY      key for serving's /admin/* (unset: admin endpoints off)
  DRIFTLOOP_MLFLOW_PORT        MLflow UI and server (5000)
  DRIFTLOOP_DAGSTER_PORT       Dagster UI (3000)
  DRIFTLOOP_SERVE_PORT         serving HTTP (8000); DRIFTLOOP_SERVE_REPLICAS (1)
  DRIFTLOOP_TRACKING_URI       MLflow store (<home>/mlflow/mlflow.db); an http(s):// server
                               is used as it is and not started here
  DRIFTLOOP_N_TRIALS           Optuna trials per training run (50)
  DRIFTLOOP_LANDING_SENSOR_INTERVAL_S, DRIFTLOOP_SCHEDULE_CRON   when new data is looked at
  DRIFTLOOP_DEBUG=1            tracebacks instead of one-sentence errors
All settings: README.md, Configuration."""

CHAMPION_POLL_S = 5.0


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    return supervise(settings, serving=True)


def cmd_ui(settings: Settings, args: argparse.Namespace) -> int:
    return supervise(settings, serving=False)


def supervise(settings: Settings, serving: bool) -> int:
    """Start the loop's servers in order, print where they answer, watch them until
    Ctrl-C/SIGTERM or a failure, then stop every one of them."""
    from driftloop.registry import configure_tracking
    from driftloop.serving_client import serving_verify
    from driftloop.supervisor import ChildFailed, Supervisor, loop_env, port_in_use, services
    from pipelines.launch import prepare_dagster_home

    prepare_dagster_home(settings)
    configure_tracking(settings)
    wanted = services(settings, settings.dagster_home)
    if settings.mlflow_tracking_uri.startswith(("http://", "https://")):
        wanted.pop("mlflow")  # a tracking server of the deployment's own: use it as it is
    if not serving:
        wanted.pop("serve")
    ports = {"mlflow": "MLFLOW", "dagster": "DAGSTER", "serve": "SERVE"}
    for name, service in wanted.items():
        if port_in_use(service.port):
            raise UserError(
                f"port {service.port} for {name} is in use (another `driftloop up`?): "
                f"set DRIFTLOOP_{ports[name]}_PORT"
            )
    _print_settings(settings)
    supervisor = Supervisor(settings.logs, loop_env(settings), serving_verify(settings))
    # `kill`, systemd and Kubernetes stop with SIGTERM: it takes Ctrl-C's way out.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    code = 0
    try:
        _run(supervisor, settings, wanted)
    except KeyboardInterrupt:
        print("stopping …", flush=True)
    except ChildFailed as failed:
        print(f"driftloop: {failed.report()}", file=sys.stderr, flush=True)
        code = 1
    finally:
        left = supervisor.stop()
    if left:
        print(f"driftloop: processes {sorted(left)} survived SIGKILL", file=sys.stderr)
        return 1
    print("stopped: no server process left")
    return code


def _run(supervisor: Supervisor, settings: Settings, wanted: dict[str, Service]) -> None:
    """MLflow, then Dagster, then serving once there is a @champion; then watch them all
    until a signal or a failure ends this."""
    from driftloop.registry import Registry

    for name in ("mlflow", "dagster"):
        if name in wanted:
            print(f"starting {name} …", flush=True)
            supervisor.start_service(wanted[name])
            supervisor.wait_healthy(name)
    serve = wanted.get("serve")
    registry = Registry(settings.mlflow_tracking_uri, settings.model_name)
    champion = _champion(registry) if serve else None
    if serve and champion:
        _start_serving(supervisor, serve, champion)
    _print_urls(settings, wanted, serve_waiting=serve is not None and champion is None)
    next_look = time.monotonic() + CHAMPION_POLL_S
    while True:
        supervisor.check()
        if serve and not supervisor.started(serve.name) and time.monotonic() >= next_look:
            next_look = time.monotonic() + CHAMPION_POLL_S
            champion = _champion(registry)
            if champion:
                _start_serving(supervisor, serve, champion)
                print(f"serving: {serve.url} (predict: POST {_predict_url(settings)})")
        time.sleep(1)


def _start_serving(supervisor: Supervisor, serve: Service, champion: str) -> None:
    print(f"starting serving with @champion v{champion} …", flush=True)
    supervisor.start_service(serve)
    supervisor.wait_healthy(serve.name)


def _champion(registry: Registry) -> str | None:
    """The @champion's version, or None (also while the store is briefly unreachable)."""
    from mlflow.exceptions import MlflowException

    from driftloop.registry import CHAMPION

    try:
        found = registry.by_alias(CHAMPION)
    except MlflowException:
        return None
    return found.version if found else None


def _predict_url(settings: Settings) -> str:
    from driftloop.supervisor import serve_url

    return f"{serve_url(settings)}/v1/models/{settings.model_name}:predict"


def _print_settings(settings: Settings) -> None:
    from driftloop.schema import load_schema

    schema = load_schema(settings.schema_path)
    metric = schema.metric if schema else settings.metric or "chosen from the first file"
    admin = (
        "on (X-API-Key)"
        if settings.admin_api_key
        else "off (DRIFTLOOP_ADMIN_API_KEY unset or empty)"
    )
    print(f"driftloop home {settings.home}")
    print(
        f"  target column {settings.target_column!r}, metric {metric}, "
        f"promotion {settings.promotion_policy}, admin API {admin}"
    )


def _print_urls(settings: Settings, wanted: dict[str, Service], serve_waiting: bool) -> None:
    """The one table a user needs: where each server answers, where data goes."""
    rows = [
        ("MLflow", wanted["mlflow"].url if "mlflow" in wanted else redacted(settings.tracking_uri))
    ]
    rows.append(("Dagster", wanted["dagster"].url))
    if "serve" in wanted:
        if serve_waiting:
            rows.append(("serving", "waits for a @champion (starts once one is promoted)"))
        else:
            rows.append(("serving", f"{wanted['serve'].url}   docs {wanted['serve'].url}/docs"))
            rows.append(("predict", f"POST {_predict_url(settings)}"))
            rows.append(("feedback", f"POST {wanted['serve'].url}/v1/feedback"))
    rows.append(("landing", f"{settings.landing}   (CSV/Parquet with {settings.target_column!r})"))
    rows.append(("logs", str(settings.logs)))
    width = max(len(name) for name, _ in rows)
    print()
    for name, where in rows:
        print(f"  {name:<{width}}  {where}")
    print()
    if serve_waiting:
        print(
            f"no @champion of {settings.model_name!r} yet: land files in {settings.landing} and "
            "run `driftloop train` (or the training job in the Dagster UI)"
        )
    print("Ctrl-C stops everything.", flush=True)


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    """The closed loop (cli/demo/) in a fresh home under `<home>/demo/`."""
    if args.classic:
        if args.task != "classification":
            raise UserError("--classic simulates loan approvals only: drop --task regression")
        return cmd_demo_classic(settings, args)
    from dataclasses import replace

    from cli.demo.plan import FULL, QUICK, STATIONARY
    from cli.demo.run import run_demo

    plan = replace(QUICK if args.quick else FULL, task=args.task)
    if args.stationary:
        plan = replace(STATIONARY, task=args.task, calm_s=args.minutes * 60)
    if args.rows:
        plan = replace(plan, rows=args.rows)
    if args.trials:
        plan = replace(plan, trials=args.trials)
    run_demo(plan, settings, json_path=args.json, keep_ui=not args.no_ui)
    return 0


def cmd_demo_classic(settings: Settings, args: argparse.Namespace) -> int:
    """The first demo: simulate → train → champion → status → UIs, without the loop."""
    rows = args.rows or 20_000
    print(f"[1/3] simulating {rows} loan applications into {settings.landing}")
    cmd_simulate(settings, _parser().parse_args(["simulate", "--rows", str(rows)]))
    print("[2/3] ingesting and training on the embedded Dagster instance")
    cmd_train(settings, args)
    print("[3/3] registry status")
    cmd_status(settings, argparse.Namespace(json=False))
    if args.no_ui:
        return 0
    return cmd_ui(settings, args)


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from serving import launch
    from serving.app import ServeArgs

    serve_args = ServeArgs(
        home=str(settings.home), num_replicas=args.replicas, canary_weight=args.canary_weight
    )
    try:
        url = launch.start(settings, serve_args, haproxy=not args.no_haproxy)
        # `kill`, systemd and Kubernetes stop with SIGTERM: it takes the same way out as
        # Ctrl-C, through the `finally`. Set after Ray, which installs a handler of its own.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        print(f"serving @champion of {settings.model_name!r} at {url}")
        print(f"  POST {url}/v1/models/{settings.model_name}:predict   docs: {url}/docs")
        print("Ctrl-C stops it.")
        signal.pause()
    finally:
        launch.stop(settings)
    return 0


def cmd_bench_serve(settings: Settings, args: argparse.Namespace) -> int:
    from bench import serve as serve_bench
    from driftloop.registry import CHAMPION, Registry, configure_tracking

    configure_tracking(settings)
    if Registry(settings.mlflow_tracking_uri, settings.model_name).by_alias(CHAMPION) is None:
        print("no @champion yet: simulating data and training one")
        cmd_simulate(settings, _parser().parse_args(["simulate", "--rows", "5000"]))
        cmd_train(settings, args)
    result = serve_bench.run(
        settings, quick=args.quick, json_path=args.json, replicas=args.replicas
    )
    print(serve_bench.table(result))
    print(f"wrote {args.json}")
    return 0


def cmd_bench_chaos(settings: Settings, args: argparse.Namespace) -> int:
    from bench import chaos

    def train(home: Settings) -> None:
        """Simulated loans into the soak's fresh home, then the real training job."""
        cmd_simulate(home, _parser().parse_args(["simulate", "--rows", "3000"]))
        cmd_train(home, args)

    minutes = args.minutes or (2.0 if args.quick else 10.0)
    result = chaos.run(settings, train, minutes=minutes, quick=args.quick, json_path=args.json)
    print(chaos.table(result))
    print(f"wrote {args.json}")
    return 0


def cmd_bench_scale(settings: Settings, args: argparse.Namespace) -> int:
    """The harness lives with the other benchmarks in the checkout's scripts/, not here."""
    import subprocess

    from driftloop.settings import PROJECT_ROOT

    script = PROJECT_ROOT / "scripts" / "bench_scale.py"
    if not script.exists():
        raise UserError(f"{script} is missing: the scale benchmark runs from a checkout")
    command = [sys.executable, str(script), "--json", str(args.json)]
    return subprocess.call([*command, "--quick"] if args.quick else command)
