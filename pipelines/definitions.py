"""The one entry point of the code location (`workspace.yaml` loads `defs`)."""

import dagster as dg

from assets import canary, ingestion, monitoring, registry, serving, training
from driftloop.settings import Settings, load_settings
from pipelines.audit_sensor import audit_sensor
from pipelines.jobs import canary_job, ingest_job, monitoring_job, training_job
from pipelines.monitor_sensors import (
    canary_sensor,
    drift_sensor,
    error_stream_sensor,
    prediction_log_sensor,
    quality_sensor,
    run_failure_alert,
)
from pipelines.schedules import nightly_training
from pipelines.sensors import landing_sensor
from resources.deployment import build_resources


def build_definitions(settings: Settings) -> dg.Definitions:
    return dg.Definitions.merge(
        dg.Definitions(
            assets=dg.load_assets_from_modules(
                [ingestion, training, registry, monitoring, canary, serving], include_specs=True
            ),
            asset_checks=dg.load_asset_checks_from_modules(
                [ingestion, training, registry, monitoring, canary]
            ),
        ),
        dg.Definitions(
            jobs=[ingest_job, training_job, monitoring_job, canary_job],
            schedules=[nightly_training(settings)],
            sensors=[
                landing_sensor(settings),
                prediction_log_sensor(settings),
                drift_sensor(settings),
                quality_sensor(settings),
                error_stream_sensor(settings),
                canary_sensor(settings),
                audit_sensor(settings),
                run_failure_alert,
            ],
            resources=build_resources(settings),
        ),
    )


defs = build_definitions(load_settings())
