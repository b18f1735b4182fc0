"""Registry webhook deliveries checked as MLflow signs them, and the replicas' wake-up."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from mlflow.webhooks.delivery import _generate_hmac_signature

from driftloop.settings import Settings
from serving.registry_events import (
    MAX_AGE_S,
    AliasEvent,
    Refused,
    RegistryEvents,
    describe,
    verify,
    webhook_name,
    webhook_secret,
    webhook_url,
)

SECRET = "s" * 40
BODY = json.dumps(
    {
        "entity": "model_version_alias",
        "action": "created",
        "timestamp": "2026-12-01T00:00:00+00:00",
        "data": {"name": "driftloop", "alias": "champion", "version": "3"},
    }
)


def headers(body: str = BODY, secret: str = SECRET, at: float | None = None) -> dict[str, str]:
    """What MLflow's delivery sends, signed by MLflow's own function."""
    stamp = str(int(time.time() if at is None else at))
    return {
        "x-mlflow-delivery-id": "d-1",
        "x-mlflow-timestamp": stamp,
        "x-mlflow-signature": _generate_hmac_signature(secret, "d-1", stamp, body),
    }


def test_an_event_signed_as_mlflow_signs_it_is_accepted() -> None:
    event = verify(SECRET, headers(), BODY.encode(), time.time())
    assert event == AliasEvent("driftloop", "champion", "created", "d-1")
    assert describe(event, "driftloop") == (True, "@champion created: replicas sync now")


@pytest.mark.parametrize(
    ("change", "status", "words"),
    [
        (lambda h: {}, 401, "unsigned"),
        (lambda h: {**h, "x-mlflow-signature": ""}, 401, "unsigned"),
        (lambda h: headers(secret="t" * 40), 403, "does not match"),
        (lambda h: {**h, "x-mlflow-delivery-id": "d-2"}, 403, "does not match"),
        (lambda h: headers(at=time.time() - MAX_AGE_S - 5), 403, "s old"),
        (lambda h: headers(at=time.time() + MAX_AGE_S + 5), 403, "s old"),
        (lambda h: {**h, "x-mlflow-timestamp": "yesterday"}, 403, "Unix time"),
    ],
)
def test_unsigned_forged_or_stale_deliveries_are_refused_without_the_secret(
    change, status: int, words: str
) -> None:
    with pytest.raises(Refused) as refused:
        verify(SECRET, change(headers()), BODY.encode(), time.time())
    assert refused.value.status == status and words in refused.value.message
    assert SECRET not in refused.value.message


def test_a_changed_body_does_not_verify() -> None:
    tampered = BODY.replace('"3"', '"4"').encode()
    with pytest.raises(Refused, match="does not match"):
        verify(SECRET, headers(), tampered, time.time())


def test_signed_events_of_another_kind_model_or_alias_wake_nothing() -> None:
    other_kind = json.dumps({"entity": "model_version", "action": "created", "data": {}})
    assert verify(SECRET, headers(other_kind), other_kind.encode(), time.time()) is None
    assert describe(None, "driftloop")[0] is False
    assert describe(AliasEvent("other", "champion", "created", "d"), "driftloop")[0] is False
    assert describe(AliasEvent("driftloop", "previous", "created", "d"), "driftloop")[0] is False
    assert describe(AliasEvent("driftloop", "challenger", "created", "d"), "driftloop")[0]
    # A promotion's removal of @challenger would drop the model it is about to promote.
    assert describe(AliasEvent("driftloop", "challenger", "deleted", "d"), "driftloop")[0] is False


def test_the_secret_comes_from_the_variable_or_its_file_and_must_be_long(tmp_path: Path) -> None:
    assert webhook_secret(Settings(home=tmp_path)) is None
    assert webhook_secret(Settings(home=tmp_path, registry_webhook_secret="  ")) is None
    secret_file = tmp_path / "secret"
    secret_file.write_text(f"{SECRET}\n")
    on_file = Settings(home=tmp_path, registry_webhook_secret_file=str(secret_file))
    assert webhook_secret(on_file) == SECRET
    with pytest.raises(ValueError, match="fewer than 32") as short:
        webhook_secret(Settings(home=tmp_path, registry_webhook_secret="k" * 31))
    assert "k" * 31 not in str(short.value)


def test_the_webhook_is_named_by_model_and_points_at_serving(tmp_path: Path) -> None:
    assert webhook_name("driftloop") == "driftloop-driftloop"
    assert webhook_name("loans/eu model") == "driftloop-loans-eu-model"
    assert len(webhook_name("m" * 100)) < 63
    local = Settings(home=tmp_path, serve_port=8123)
    assert webhook_url(local) == "http://127.0.0.1:8123/v1/registry-events"
    given = Settings(home=tmp_path, registry_webhook_url="https://serving.internal/v1/re")
    assert webhook_url(given) == "https://serving.internal/v1/re"


def test_a_wake_up_is_never_lost_between_two_waits() -> None:
    events = RegistryEvents.func_or_class()

    async def scenario() -> None:
        assert await events.wait(0, 0.05) == 0  # nothing happened: the poll's timeout
        waiting = asyncio.create_task(events.wait(0, 30))
        await asyncio.sleep(0)
        assert await events.wake() == 1
        assert await asyncio.wait_for(waiting, 1) == 1  # woken at once, not after 30 s
        await events.wake()  # while nobody waits (a replica busy syncing)
        assert await asyncio.wait_for(events.wait(1, 30), 1) == 2  # returns at once

    asyncio.run(scenario())
