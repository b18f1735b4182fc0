"""Shows the serving audit trail in the Dagster UI: one observation per entry."""

import json
from typing import Any

import dagster as dg

from assets.serving import serving_admin_audit
from driftloop.audit import AuditEntry, AuditTrail
from driftloop.settings import Settings
from resources.deployment import DriftloopResource

# Entries observed per tick; a backlog is worked off in order, tick by tick.
ENTRIES_PER_TICK = 200
# Who and what, as plain metadata values (shown as columns on the asset's page).
TEXT_FIELDS = ("at", "action", "outcome", "role", "key_id", "client", "forwarded_for")


def observation(entry: AuditEntry) -> dg.AssetObservation:
    fields = entry.fields
    metadata: dict[str, Any] = {
        name: dg.MetadataValue.text(str(fields[name]))
        for name in TEXT_FIELDS
        if fields.get(name) is not None
    }
    for name in ("before", "after"):
        if fields.get(name) is not None:
            metadata[name] = dg.MetadataValue.json(json.loads(json.dumps(fields[name])))
    if fields.get("suppressed_before"):
        metadata["suppressed_before"] = dg.MetadataValue.int(int(fields["suppressed_before"]))
    return dg.AssetObservation(asset_key=serving_admin_audit.key, metadata=metadata)


def audit_sensor(settings: Settings) -> dg.SensorDefinition:
    @dg.sensor(
        name="audit_sensor",
        minimum_interval_seconds=settings.landing_sensor_interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Records each serving admin action and refused attempt on "
        f"`{serving_admin_audit.key.to_user_string()}`.",
    )
    def _sensor(
        context: dg.SensorEvaluationContext, driftloop: DriftloopResource
    ) -> dg.SensorResult:
        trail = AuditTrail(driftloop.settings().audit_log)
        entries = trail.read(after=context.cursor or None, limit=ENTRIES_PER_TICK)
        if not entries:
            return dg.SensorResult(skip_reason="no new admin actions", cursor=context.cursor)
        return dg.SensorResult(
            asset_events=[observation(entry) for entry in entries], cursor=entries[-1].name
        )

    return _sensor
