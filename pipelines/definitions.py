"""The one entry point of the code location (`workspace.yaml` loads `defs`)."""

import dagster as dg

from assets import ingestion, registry, training
from driftloop.settings import Settings, load_settings
from pipelines.jobs import ingest_job, training_job
from pipelines.resources import build_resources
from pipelines.schedules import nightly_training
from pipelines.sensors import landing_sensor


def build_definitions(settings: Settings) -> dg.Definitions:
    return dg.Definitions.merge(
        dg.Definitions(
            assets=dg.load_assets_from_modules([ingestion, training, registry]),
            asset_checks=dg.load_asset_checks_from_modules([ingestion, training, registry]),
        ),
        dg.Definitions(
            jobs=[ingest_job, training_job],
            schedules=[nightly_training(settings)],
            sensors=[landing_sensor(settings)],
            resources=build_resources(settings),
        ),
    )


defs = build_definitions(load_settings())
