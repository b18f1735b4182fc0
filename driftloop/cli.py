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
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from driftloop.settings import PROJECT_ROOT, Settings, load_settings


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
        if getattr(args, "trials", None):
            os.environ["DRIFTLOOP_N_TRIALS"] = str(args.trials)
        settings = load_settings()
        return args.command(settings, args) or 0
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # the CLI's one place that turns errors into a sentence
        if os.environ.get("DRIFTLOOP_DEBUG"):
            raise
        message = _one_line(error)
        if settings is not None and _UNREACHABLE.search(str(error)):
            message = f"cannot reach the MLflow store at {settings.mlflow_tracking_uri}"
        print(f"driftloop: {message}", file=sys.stderr)
        return 2


_UNREACHABLE = re.compile(r"Connection refused|Max retries exceeded|Failed to establish")


def _one_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    message = text[0] if text else type(error).__name__
    if "validation error" in message and len(text) > 2:  # pydantic: say which setting
        message = f"bad configuration: {text[1].strip()} {text[2].strip()}"
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

    ui = commands.add_parser("ui", help="start the Dagster and MLflow UIs")
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
    demo.add_argument("--json", type=Path, metavar="PATH", help="write the summary here")
    demo.add_argument("--rows", type=int, help="the first champion's training rows")
    demo.add_argument("--trials", type=int)
    demo.add_argument("--no-ui", action="store_true", help="exit instead of keeping the UIs")
    demo.add_argument(
        "--classic", action="store_true", help="only simulate, train, show status and open the UIs"
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
    from pipelines.launch import ingest_pending, prepare_dagster_home, run_training

    prepare_dagster_home(settings)
    with dg.DagsterInstance.get() as instance:
        started = time.perf_counter()
        ingest_pending(settings, instance, print)
        if not BatchStore(settings.batches).keys():
            raise UserError(
                f"no accepted data yet: put CSV or Parquet files with a {settings.target_column!r} "
                f"column into {settings.landing} (or run `driftloop simulate`)"
            )
        print(f"training with {settings.n_trials} trials, {settings.cv_folds}-fold CV …")
        result = run_training(settings, instance, trigger="cli")
        seconds = time.perf_counter() - started
        if not result.success:
            raise UserError(f"training run {result.run_id} failed: {_failure_of(result)}")
        decision = result.output_for_node("promotion_gate")
        print(f"training run {result.run_id} finished in {seconds:.1f}s: {decision.summary()}")
    return 0


def _failure_of(result: Any) -> str:
    for event in result.all_events:
        if event.is_failure and event.step_failure_data is not None:
            error = event.step_failure_data.error
            while error.cause is not None:  # the root cause is what the user can act on
                error = error.cause
            return error.message.strip().splitlines()[0]
    for event in result.all_events:
        if event.event_type_value == "ASSET_CHECK_EVALUATION":
            data = event.event_specific_data.asset_check_evaluation
            if not data.passed:
                return f"check {data.check_name} failed: {data.description}"
    return "see the run in the Dagster UI"


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    report = status_report(settings)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    for alias, info in report["aliases"].items():
        if info is None:
            print(f"@{alias:<10} -")
        else:
            print(
                f"@{alias:<10} v{info['version']}  holdout accuracy {info['holdout_accuracy']}  "
                f"sha256 {(info['sha256'] or '')[:12]}  run {info['run_id']}"
            )
    dataset = report["dataset"]
    print(f"dataset: target {dataset['target']!r}, features {dataset['features']}")
    print(f"last ingest: {report['last_ingest']}")
    print(f"last run: {report['last_run']}")
    return 0


def status_report(settings: Settings) -> dict[str, Any]:
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
                "run_id": info.run_id,
                "sha256": info.sha256,
                "holdout_accuracy": _as_float(info.tags.get("driftloop.holdout_accuracy")),
                "data_hash": info.tags.get("driftloop.data_hash"),
                "trigger": info.tags.get("driftloop.trigger"),
            }
        )
    schema = load_schema(settings.schema_path)
    keys = BatchStore(settings.batches).keys()
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
        "dataset": {
            "target": schema.target if schema else settings.target_column,
            "features": schema.feature_names if schema else [],
        },
        "last_ingest": last_ingest,
        "last_run": _last_run(settings),
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


def cmd_promote(settings: Settings, args: argparse.Namespace) -> int:
    from driftloop.registry import Registry, RegistryError, configure_tracking

    configure_tracking(settings)
    registry = Registry(settings.mlflow_tracking_uri, settings.model_name)
    try:
        replaced = registry.promote(args.version)
    except RegistryError as error:
        raise UserError(str(error)) from error
    registry.set_tags(args.version, {"driftloop.decision.manual": "promoted by driftloop promote"})
    before = f" (v{replaced.version} is now @previous)" if replaced else ""
    print(f"v{args.version} is now @champion{before}")
    return 0


def cmd_rollback(settings: Settings, args: argparse.Namespace) -> int:
    from driftloop.registry import Registry, configure_tracking

    configure_tracking(settings)
    restored, demoted = Registry(settings.mlflow_tracking_uri, settings.model_name).rollback()
    print(f"v{restored} is @champion again; v{demoted} is now @previous")
    return 0


def cmd_ui(settings: Settings, args: argparse.Namespace) -> int:
    urls = start_uis(settings)
    for name, url in urls.items():
        print(f"{name}: {url}")
    print("Ctrl-C stops both.")
    signal.pause()
    return 0


_CHILDREN: list[subprocess.Popen[bytes]] = []


def start_uis(settings: Settings) -> dict[str, str]:
    """Start `dagster dev` (webserver + daemon, so sensors and schedules run) and MLflow."""
    import atexit

    from driftloop.registry import configure_tracking
    from pipelines.launch import prepare_dagster_home

    prepare_dagster_home(settings)
    configure_tracking(settings)
    settings.logs.mkdir(parents=True, exist_ok=True)
    commands = ui_commands(settings)
    # MLflow's server-side job runner (GenAI evaluation jobs) costs a dozen processes here.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    for name, command in commands.items():
        log = open(settings.logs / f"{name}-ui.log", "ab")  # noqa: SIM115 - lives with the child
        # From DAGSTER_HOME, so `dagster dev` does not also find the repo's dagster.yaml.
        cwd = settings.dagster_home
        _CHILDREN.append(
            subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        )
    atexit.register(_stop_children)
    return {
        "Dagster UI": f"http://127.0.0.1:{settings.dagster_port}",
        "MLflow UI": f"http://127.0.0.1:{settings.mlflow_port}",
        "logs": str(settings.logs),
    }


def ui_commands(settings: Settings) -> dict[str, list[str]]:
    """`dagster dev` (webserver + daemon, so sensors and schedules run) and the MLflow
    server, both on 127.0.0.1: shared by `driftloop ui` and the demo."""
    bin_dir = Path(sys.executable).parent
    return {
        "dagster": [
            str(bin_dir / "dagster"),
            "dev",
            "-w",
            str(PROJECT_ROOT / "workspace.yaml"),
            "-h",
            "127.0.0.1",
            "-p",
            str(settings.dagster_port),
        ],
        "mlflow": [
            str(bin_dir / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(settings.mlflow_port),
            "--backend-store-uri",
            settings.mlflow_tracking_uri,
            "--default-artifact-root",
            settings.mlflow_artifact_root,
        ],
    }


def _stop_children() -> None:
    for child in _CHILDREN:
        child.terminate()
    for child in _CHILDREN:
        try:
            child.wait(timeout=15)
        except subprocess.TimeoutExpired:
            child.kill()


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    """The closed loop (driftloop/demo.py) in a fresh home under `<home>/demo/`."""
    if args.classic:
        return cmd_demo_classic(settings, args)
    from dataclasses import replace

    from driftloop.demo import FULL, QUICK, run_demo

    plan = QUICK if args.quick else FULL
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
    from driftloop.registry import CHAMPION, Registry, configure_tracking
    from serving import bench

    configure_tracking(settings)
    if Registry(settings.mlflow_tracking_uri, settings.model_name).by_alias(CHAMPION) is None:
        print("no @champion yet: simulating data and training one")
        cmd_simulate(settings, _parser().parse_args(["simulate", "--rows", "5000"]))
        cmd_train(settings, args)
    result = bench.run(settings, quick=args.quick, json_path=args.json, replicas=args.replicas)
    print(bench.table(result))
    print(f"wrote {args.json}")
    return 0
