"""The landing-zone sensor: one ingest run per new file, never two for the same content."""

import json

import dagster as dg

from assets.ingestion import landed_files
from driftloop.ingest import pending_files
from driftloop.settings import Settings
from pipelines.jobs import ingest_job
from resources.deployment import TRIGGER_TAG, DriftloopResource

# Hashing stops for this tick after this long (the rest is hashed next tick): a large
# backlog then advances tick by tick instead of timing out every tick (Dagster: 60 s).
SCAN_BUDGET_S = 30.0


def landing_sensor(settings: Settings) -> dg.SensorDefinition:
    @dg.sensor(
        name="landing_sensor",
        job=ingest_job,
        minimum_interval_seconds=settings.landing_sensor_interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Requests an ingest run for each new file in the landing zone.",
    )
    def _sensor(
        context: dg.SensorEvaluationContext, driftloop: DriftloopResource
    ) -> dg.SensorResult:
        # The cursor maps file name -> size:mtime so unchanged files are not re-hashed, and
        # a file refused or unreadable is remembered too: reported once, not every tick.
        fingerprints = json.loads(context.cursor) if context.cursor else {}
        known = context.instance.get_dynamic_partitions(landed_files.name)
        current = driftloop.settings()
        skipped: list[str] = []
        new_keys, remembered = pending_files(
            current.landing,
            known,
            fingerprints,
            current.max_file_bytes,
            budget_s=SCAN_BUDGET_S,
            on_skip=lambda name, reason: skipped.append(f"{name!r}: {reason}"),
        )
        for line in skipped:
            context.log.warning(f"skipped {line}")
        cursor = json.dumps(remembered, sort_keys=True)
        if not new_keys:
            note = f"; skipped {'; '.join(skipped)}" if skipped else ""
            return dg.SensorResult(
                skip_reason=f"no new files in the landing zone{note}", cursor=cursor
            )
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(run_key=key, partition_key=key, tags={TRIGGER_TAG: "landing"})
                for key in new_keys
            ],
            dynamic_partitions_requests=[landed_files.build_add_request(new_keys)],
            cursor=cursor,
        )

    return _sensor
