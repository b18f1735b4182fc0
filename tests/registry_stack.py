"""A real MLflow tracking server that delivers registry webhooks, and two versions in it:
what the webhook test and `scripts/bench_registry_events.py` both run against."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from cryptography.fernet import Fernet

from driftloop.registry import CHAMPION, Registry
from driftloop.schema import infer_schema
from driftloop.settings import Settings
from driftloop.training import DEFAULT_TRIALS, make_model
from tests.serving.conftest import diabetes_table, register_fitted, tracking

BIN = Path(sys.executable).parent
# What an MLflow server needs to deliver to serving on this machine: plain http and a
# private address are refused by default (SSRF protection); its webhook list is cached for
# 60 s by default (a webhook registered at deploy would miss that long); and without a
# fixed key the secrets it stores cannot be read after a restart.
WEBHOOK_SERVER_ENV = {
    "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
    "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
    "MLFLOW_WEBHOOK_CACHE_TTL": "1",
}


@contextlib.contextmanager
def mlflow_server(root: Path, port: int) -> Iterator[str]:
    """`mlflow server` on SQLite under `root`, serving artifacts itself; its URL once
    healthy. Stopped (its whole process group) on exit."""
    root.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        **WEBHOOK_SERVER_ENV,
        "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": Fernet.generate_key().decode(),
    }
    command = [
        str(BIN / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
    ]
    with open(root / "server.log", "w") as log:
        server = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, (root / "server.log").read_text()[-2000:]
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, "the MLflow server never became healthy"
            time.sleep(0.2)
        yield url
    finally:
        os.killpg(server.pid, 15)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
            server.wait()


def two_regressors(settings: Settings) -> tuple[str, str]:
    """Boosting (v1, @champion) and Ridge (v2) on the diabetes table, registered as
    training registers a candidate, in `settings`' registry."""
    frame = diabetes_table()
    schema = infer_schema(frame, "target")
    x, y = frame[schema.feature_names], frame["target"]
    fitted = [make_model(p, schema, seed=0).fit(x, y) for p in DEFAULT_TRIALS["regression"]]
    with tracking(settings):
        first, second = (register_fitted(settings, m, schema, x) for m in fitted[:2])
    Registry(settings.mlflow_tracking_uri, settings.model_name).set_alias(CHAMPION, first)
    return first, second
