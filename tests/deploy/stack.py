"""A throwaway scale-out stack on 127.0.0.1: PostgreSQL, an S3 endpoint (moto) and an MLflow
tracking server, wired to driftloop and Dagster through the same environment variables as
`deploy/docker-compose.yaml`.

Shared by the integration tests and `scripts/bench_scaleout.py`, so the numbers come from
the stack the tests check.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import boto3
import psycopg2
import yaml
from botocore.client import BaseClient

from serving.launch import free_port

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DATABASES = ("dagster", "mlflow", "optuna")
BUCKET = "driftloop"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# Only what the in-process tests can run: runs are executed in-process, so the container
# run launcher (dagster-docker, not installed here) is never asked to launch anything.
NOT_LOADED_HERE = ("run_launcher",)
# Dagster's S3 compute-log manager leaves one `upload-watch` thread per captured run that
# wakes every `upload_interval` s and may ask S3 whether the logs are complete; at the
# deployment's 30 s such a thread outlives the test module and fails on the stopped
# endpoint. Tests poll every second and wait for those threads before stopping S3.
TEST_UPLOAD_INTERVAL_S = 1


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    if not candidates:
        raise FileNotFoundError(
            f"{name} not found: install PostgreSQL (apt-get install postgresql)"
        )
    return str(candidates[-1])


def _as_postgres_user() -> list[str]:
    """initdb and postgres refuse to run as root (CI runs as root): drop to a system user."""
    if os.geteuid() != 0:
        return []
    user = "postgres" if _user_exists("postgres") else "nobody"
    return ["runuser", "-u", user, "--"]


def _user_exists(name: str) -> bool:
    return subprocess.run(["id", name], capture_output=True).returncode == 0


class PostgresServer:
    """A PostgreSQL cluster in a temp directory, listening only on 127.0.0.1."""

    user = "driftloop"

    def __init__(self) -> None:
        # Under /tmp directly: pytest's tmp_path is private to root, and the server may run
        # as another user.
        self.root = Path(tempfile.mkdtemp(prefix="driftloop-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = free_port()
        self._run_as = _as_postgres_user()
        if self._run_as:
            shutil.chown(self.root, user=self._run_as[2])

    def _pg(self, *args: str, timeout: float = 60) -> None:
        subprocess.run(
            [*self._run_as, *args], check=True, capture_output=True, timeout=timeout, cwd=self.root
        )

    def start(self) -> None:
        if not self.data.exists():
            self._pg(
                _pg_bin("initdb"), "-D", str(self.data), "-U", self.user, "--auth=trust", "-E",
                "UTF8", "--no-sync",
            )  # fmt: skip
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} "
            "-c fsync=off -c synchronous_commit=off -c max_connections=200"
        )
        self._pg(
            _pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-o", options,
            "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._pg(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self) -> None:
        """Drop every connection (as a failover or an upgrade would), then come back."""
        self.stop("immediate")
        self.start()

    def url(self, db: str, driver: str = "postgresql") -> str:
        return f"{driver}://{self.user}@127.0.0.1:{self.port}/{db}"

    def create_databases(self, *names: str) -> None:
        conn = psycopg2.connect(self.url("postgres"))
        conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        try:
            with conn.cursor() as cur:
                for name in names:
                    cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()

    def query(self, db: str, sql: str, *params: object) -> list[tuple]:
        conn = psycopg2.connect(self.url(db))
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall()
        finally:
            conn.close()

    def cleanup(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def s3_server() -> Iterator[str]:
    """moto's S3 on a free local port, with the bucket created; yields the endpoint URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        s3_client(endpoint).create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        _await_log_uploads(timeout_s=10 * TEST_UPLOAD_INTERVAL_S)
        server.stop()


def _await_log_uploads(timeout_s: float) -> None:
    """Let compute-log upload threads see their capture complete while S3 still answers."""
    for thread in threading.enumerate():
        if thread.name == "upload-watch":
            thread.join(timeout_s)


def stop(process: subprocess.Popen) -> None:
    """End a server process: politely, then by force if it does not exit in 20 s."""
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


@contextmanager
def pushgateway() -> Iterator[str]:
    """Prometheus' Pushgateway (Debian's prometheus-pushgateway) on a free local port."""
    binary = shutil.which("prometheus-pushgateway") or shutil.which("pushgateway")
    if binary is None:
        raise RuntimeError("no Pushgateway binary: apt-get install prometheus-pushgateway")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [binary, f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.2)
        yield url
    finally:
        stop(process)


def s3_client(endpoint: str) -> BaseClient:
    return boto3.client("s3", endpoint_url=endpoint, **_boto_credentials())


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": AWS_ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        "region_name": AWS_ENV["AWS_DEFAULT_REGION"],
    }


def s3_keys(endpoint: str, prefix: str) -> list[str]:
    pages = (
        s3_client(endpoint).get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    )
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


@contextmanager
def mlflow_server(backend_store_uri: str, s3_endpoint: str, log: Path) -> Iterator[str]:
    """`mlflow server` on PostgreSQL with artifacts proxied to S3; yields its URL."""
    port = free_port()
    env = {**os.environ, **AWS_ENV, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint}
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", backend_store_uri,
        "--artifacts-destination", f"s3://{BUCKET}/mlflow",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    with open(log, "wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(f"{url}/health", process, log, timeout=120)
        yield url
    finally:
        stop(process)


def _wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"mlflow server not healthy after {timeout}s: {log.read_text()[-2000:]}")


@dataclass(frozen=True)
class Stack:
    postgres: PostgresServer
    s3_endpoint: str
    mlflow_url: str

    def env(self) -> dict[str, str]:
        """The scale-out configuration: the variables compose and the Helm values set."""
        return {
            **AWS_ENV,
            "DAGSTER_POSTGRES_HOST": "127.0.0.1",
            "DAGSTER_POSTGRES_PORT": str(self.postgres.port),
            "DAGSTER_POSTGRES_USER": self.postgres.user,
            "DAGSTER_POSTGRES_PASSWORD": "",
            "DAGSTER_POSTGRES_DB": "dagster",
            "DAGSTER_MAX_CONCURRENT_RUNS": "4",
            "DRIFTLOOP_TRACKING_URI": self.mlflow_url,
            "DRIFTLOOP_OPTUNA_STORAGE": self.postgres.url("optuna", "postgresql+psycopg2"),
            "DRIFTLOOP_IO_BUCKET": BUCKET,
            "DRIFTLOOP_S3_ENDPOINT_URL": self.s3_endpoint,
            "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint,
        }


@contextmanager
def scaleout_stack(workdir: Path) -> Iterator[Stack]:
    """PostgreSQL with one database per store, S3, and MLflow on top of both."""
    with ExitStack() as stack:
        postgres = PostgresServer()
        stack.callback(postgres.cleanup)
        postgres.start()
        postgres.create_databases(*DATABASES)
        endpoint = stack.enter_context(s3_server())
        url = stack.enter_context(
            mlflow_server(
                postgres.url("mlflow", "postgresql+psycopg2"),
                endpoint,
                workdir / "mlflow-server.log",
            )
        )
        yield Stack(postgres, endpoint, url)


def write_instance_yaml(dagster_home: Path) -> Path:
    """Put `deploy/dagster.yaml` into DAGSTER_HOME as the deployment does, less what needs
    a container runtime (see NOT_LOADED_HERE)."""
    config = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    for key in NOT_LOADED_HERE:
        config.pop(key)
    config["compute_logs"]["config"]["upload_interval"] = TEST_UPLOAD_INTERVAL_S
    dagster_home.mkdir(parents=True, exist_ok=True)
    target = dagster_home / "dagster.yaml"
    target.write_text(yaml.safe_dump(config, sort_keys=False))
    return target


def _await_peers(barrier: Path, worker: str, peers: int, timeout_s: float = 300) -> None:
    """Sign in at `barrier` and wait until all `peers` have: interpreter start-up differs by
    seconds between processes, and without this one worker can finish before the other starts."""
    (barrier / worker).touch()
    deadline = time.monotonic() + timeout_s
    while len(list(barrier.iterdir())) < peers:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(list(barrier.iterdir()))} of {peers} workers started")
        time.sleep(0.02)


def run_trials(
    study_name: str, n_trials: int, worker: str, rows: int, barrier: Path, peers: int
) -> dict[str, float]:
    """One HPO worker: add `n_trials` real trials (driftloop's search space and CV) to the
    shared study named in `DRIFTLOOP_OPTUNA_STORAGE`; what a second training pod would do."""
    import optuna

    from driftloop.hpo import open_study
    from driftloop.metrics import metric_named
    from driftloop.schema import infer_schema
    from driftloop.settings import load_settings
    from driftloop.simulate import LoanStream
    from driftloop.training import Folds, cross_validate, limited_threads, suggest_params

    settings = load_settings()
    frame = LoanStream(seed=7).take_frame(rows, settings.target_column)
    schema = infer_schema(frame, settings.target_column)
    folds = Folds(
        schema, frame[schema.feature_names], frame[schema.target], settings.cv_folds, settings.seed
    )
    study = open_study(settings, study_name, metric_named(schema.metric))

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", worker)
        params = suggest_params(trial, schema.task)
        return cross_validate(params, folds)

    _await_peers(barrier, worker, peers)
    started = time.perf_counter()
    with limited_threads(settings.train_threads):  # one core per worker by default
        study.optimize(objective, n_trials=n_trials)
    return {"trials": n_trials, "seconds": time.perf_counter() - started}


def start_trial_workers(
    study_name: str, trials_per_worker: int, workers: int, env: dict[str, str], rows: int = 2000
) -> list[subprocess.Popen]:
    """Start `workers` processes of `run_trials` on one study; their first trials start
    together (a barrier directory), so the study really is written from both at once."""
    barrier = tempfile.mkdtemp(prefix="driftloop-hpo-barrier-")
    command = [sys.executable, __file__, study_name, str(trials_per_worker)]
    return [
        subprocess.Popen(
            [*command, f"w{index}", str(rows), barrier, str(workers)],
            env={**os.environ, **env, "DRIFTLOOP_HPO_WORKER": str(index)},
            stdout=subprocess.PIPE,
            text=True,
        )
        for index in range(workers)
    ]


if __name__ == "__main__":
    import json

    study_arg, trials_arg, worker_arg, rows_arg, barrier_arg, peers_arg = sys.argv[1:7]
    report = run_trials(
        study_arg, int(trials_arg), worker_arg, int(rows_arg), Path(barrier_arg), int(peers_arg)
    )
    print(json.dumps(report))
