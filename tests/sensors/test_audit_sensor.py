"""The serving audit trail in Dagster: admin calls made on the real routes become
observations of `serving_admin_audit`, each once, without the key."""

from __future__ import annotations

import json

import dagster as dg
from fastapi.testclient import TestClient
from pydantic import SecretStr

from assets.serving import serving_admin_audit
from driftloop.settings import Settings
from pipelines.audit_sensor import audit_sensor
from pipelines.definitions import build_definitions
from resources.deployment import DriftloopResource
from serving.app import build_api
from serving.security import key_id
from tests.serving.test_limits import StandIn

ADMIN = "a" * 40


def tick(settings: Settings, instance: dg.DagsterInstance, cursor: str | None):
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"driftloop": DriftloopResource(home=str(settings.home))},
        definitions=build_definitions(settings),
    )
    return audit_sensor(settings)(context)


def observed(instance: dg.DagsterInstance) -> list[dict[str, object]]:
    records = instance.fetch_observations(serving_admin_audit.key, limit=100).records
    return [
        {name: value.value for name, value in r.asset_observation.metadata.items()}
        for r in reversed(records)  # newest first from the instance
    ]


def test_admin_calls_become_observations_once_and_without_the_key(home: Settings) -> None:
    settings = home.model_copy(update={"admin_api_key": SecretStr(ADMIN)})
    http = TestClient(build_api(StandIn(settings)))  # type: ignore[arg-type]
    with http, dg.DagsterInstance.ephemeral() as instance:
        assert tick(settings, instance, None).skip_reason is not None
        assert http.post("/admin/reload", headers={"X-API-Key": ADMIN}).status_code == 200
        assert http.post("/admin/reload", headers={"X-API-Key": "w" * 40}).status_code == 403

        first = tick(settings, instance, None)
        assert len(first.asset_events) == 2
        for event in first.asset_events:  # what the sensor daemon does with a tick's events
            instance.report_runless_asset_event(event)
        done, refused = observed(instance)
        assert (done["action"], done["outcome"], done["role"]) == (
            "POST /admin/reload",
            "200",
            "admin",
        )
        assert refused["outcome"] == "403" and "role" not in refused  # no key of ours
        assert refused["key_id"] == key_id("w" * 40)
        assert ADMIN not in json.dumps([done, refused], default=str)

        again = tick(settings, instance, first.cursor)
        assert again.asset_events == [] and "no new admin actions" in again.skip_reason.skip_message
        assert http.post("/admin/reload").status_code == 401
        (later,) = tick(settings, instance, first.cursor).asset_events
        assert later.metadata["outcome"].value == "401"
