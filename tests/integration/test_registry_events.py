"""Registry webhooks end to end: a real `mlflow server` on SQLite delivers signed alias
events to the real application on 127.0.0.1, which serves with two replicas.

The replicas poll every POLL_S = 600 s, so within the module no poll falls due (each
replica's first poll comes POLL_S after it started): a swap within seconds of an alias
move can only come from the webhook, and it must reach the replica that did not take the
HTTP call.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pandas as pd
import pytest
from mlflow import MlflowClient

from driftloop.audit import AuditTrail
from driftloop.client import Client
from driftloop.registry import CHAMPION, Registry
from driftloop.settings import Settings, load_settings
from serving import launch
from serving.app import ServeArgs
from serving.registry_events import (
    EVENTS,
    MAX_AGE_S,
    REGISTRY_EVENTS,
    ensure_webhook,
    sign,
    webhook_name,
)
from tests.registry_stack import mlflow_server, two_regressors
from tests.serving.conftest import diabetes_table

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SECRET = "registry-webhook-secret-0123456789abcdef"
POLL_S = 600.0
SWAP_WITHIN_S = 10.0


@dataclass(frozen=True)
class Stack:
    settings: Settings
    url: str
    registry: Registry
    versions: tuple[str, str]
    started: float  # time.monotonic() before serving started: no poll before + POLL_S
    rows: pd.DataFrame  # a diabetes row, as a caller has it (the client encodes it)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("registry-events")
    with (
        mlflow_server(root / "mlflow", launch.free_port()) as tracking_uri,
        pytest.MonkeyPatch.context() as patch,
    ):
        patch.delenv("DAGSTER_HOME", raising=False)
        patch.setenv("DRIFTLOOP_HOME", str(root / "home"))
        patch.setenv("DRIFTLOOP_TRACKING_URI", tracking_uri)
        patch.setenv("DRIFTLOOP_SERVE_PORT", str(launch.free_port()))
        patch.setenv("DRIFTLOOP_REGISTRY_WEBHOOK_SECRET", SECRET)
        settings = load_settings()
        versions = two_regressors(settings)
        rows = diabetes_table().drop(columns="target").head(1)
        started = time.monotonic()
        args = ServeArgs(
            home=str(settings.home), num_replicas=2, replica_cpus=0.5, poll_interval_s=POLL_S
        )
        try:
            url = launch.start(settings, args, num_cpus=2)
            yield Stack(
                settings,
                url,
                Registry(settings.mlflow_tracking_uri, settings.model_name),
                versions,
                started,
                rows,
            )
        finally:
            launch.stop(settings)


def _mlflow(stack: Stack) -> MlflowClient:
    uri = stack.settings.mlflow_tracking_uri
    return MlflowClient(uri, registry_uri=uri)  # else the process-wide registry URI's


def _ours(stack: Stack) -> list:
    client = _mlflow(stack)
    name = webhook_name(stack.settings.model_name)
    return [w for w in client.list_webhooks() if w.name == name]


def test_serving_registers_one_webhook_that_mlflow_can_deliver_to(stack: Stack) -> None:
    (webhook,) = _ours(stack)
    assert webhook.url == f"{stack.url}{REGISTRY_EVENTS}"
    assert sorted(str(e) for e in webhook.events) == sorted(EVENTS)
    ensure_webhook(stack.settings, SECRET)  # a second deploy: the same one, updated
    (again,) = _ours(stack)
    assert again.webhook_id == webhook.webhook_id
    # MLflow signs its example event (another model's) with the stored secret: accepted.
    result = _mlflow(stack).test_webhook(webhook.webhook_id)
    assert result.success, (result.response_status, result.response_body, result.error_message)
    assert "example_model" in result.response_body


def test_a_signed_alias_move_swaps_every_replica_before_any_poll(stack: Stack) -> None:
    first, second = stack.versions
    with Client(stack.url) as client:

        def version() -> str:
            return client.predict(stack.rows)["model_version"].iloc[0]

        assert {version() for _ in range(10)} == {first}
        moved = time.monotonic()
        stack.registry.set_alias(CHAMPION, second)
        # Two replicas, one HTTP delivery: both must swap (each loads the version itself),
        # seen as 40 answers in a row from the new version.
        answers: list[str] = []
        while answers[-40:] != [second] * 40:
            assert time.monotonic() - moved < SWAP_WITHIN_S, f"not swapped: {answers[-40:]}"
            answers.append(version())
        swapped = time.monotonic()
    assert swapped < stack.started + POLL_S, "a poll could have explained the swap"


def _delivery(body: bytes, secret: str = SECRET, age_s: float = 0) -> dict[str, str]:
    delivery, stamp = str(uuid.uuid4()), str(int(time.time() - age_s))
    return {
        "Content-Type": "application/json",
        "X-MLflow-Delivery-Id": delivery,
        "X-MLflow-Timestamp": stamp,
        "X-MLflow-Signature": sign(secret, delivery, stamp, body),
    }


def _event(model: str) -> bytes:
    data = {"name": model, "alias": CHAMPION, "version": "1"}
    event = {"entity": "model_version_alias", "action": "created", "timestamp": "", "data": data}
    return json.dumps(event).encode()


def test_forged_unsigned_or_stale_events_are_refused(stack: Stack) -> None:
    ours = _event(stack.settings.model_name)
    with httpx.Client(base_url=stack.url, timeout=30) as http:
        unsigned = http.post(REGISTRY_EVENTS, content=ours)
        forged = http.post(REGISTRY_EVENTS, content=ours, headers=_delivery(ours, "x" * 40))
        stale = http.post(REGISTRY_EVENTS, content=ours, headers=_delivery(ours, age_s=600))
        tampered = http.post(
            REGISTRY_EVENTS, content=ours.replace(b'"1"', b'"2"'), headers=_delivery(ours)
        )
        other = _event("someone-else")
        foreign = http.post(REGISTRY_EVENTS, content=other, headers=_delivery(other))
        genuine = http.post(REGISTRY_EVENTS, content=ours, headers=_delivery(ours))
    assert unsigned.status_code == 401 and "unsigned" in unsigned.json()["detail"]
    assert forged.status_code == 403 and "does not match" in forged.json()["detail"]
    assert tampered.status_code == 403 and "does not match" in tampered.json()["detail"]
    assert stale.status_code == 403 and f"at most {MAX_AGE_S} s" in stale.json()["detail"]
    for refused in (unsigned, forged, stale, tampered):
        assert SECRET not in refused.text
    assert foreign.status_code == 200 and foreign.json()["woken"] is False
    assert genuine.status_code == 200 and genuine.json()["woken"] is True
    # Every refusal is in the audit trail, as a refused key is.
    trail = AuditTrail(stack.settings.audit_log).read()
    outcomes = [e.fields["outcome"] for e in trail if REGISTRY_EVENTS in e.fields["action"]]
    assert sorted(outcomes) == ["401", "403", "403", "403"]
