"""The nightly retrain: new data arrives all day, and drift is not the only reason to learn."""

import dagster as dg

from driftloop.settings import Settings
from pipelines.jobs import training_job
from resources.deployment import TRIGGER_TAG


def nightly_training(settings: Settings) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name="nightly_training",
        job=training_job,
        cron_schedule=settings.schedule_cron,
        execution_timezone=settings.schedule_timezone,
        tags={TRIGGER_TAG: "schedule"},
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Retrain every night whatever the monitors say.",
    )
