"""Running driftloop's jobs on the configured instance from the command line.

The runs go through the same instance the webserver and daemon read, so a run started
by `driftloop train` appears in the Dagster UI like any other.
"""

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import dagster as dg

from assets.ingestion import landed_files
from driftloop.ingest import pending_files
from driftloop.settings import PROJECT_ROOT, Settings
from pipelines.resources import TRIGGER_TAG

# The console shows progress (trial scores, decisions), not Dagster's per-event debug lines.
QUIET = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


def prepare_dagster_home(settings: Settings) -> Path:
    """Point DAGSTER_HOME into the driftloop home (unless the deployment set it) and put
    the embedded instance config there, so two homes never share run history."""
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    instance_yaml = home / "dagster.yaml"
    if not instance_yaml.exists():
        shutil.copyfile(PROJECT_ROOT / "dagster.yaml", instance_yaml)
    return home


def ingest_pending(
    settings: Settings, instance: dg.DagsterInstance, log: Callable[[str], None]
) -> list[str]:
    """Ingest every new landed file now, one partition run each (what the sensor requests)."""
    from pipelines.definitions import build_definitions

    known = instance.get_dynamic_partitions(landed_files.name)
    new_keys, _ = pending_files(settings.landing, known, {})
    if not new_keys:
        return []
    instance.add_dynamic_partitions(landed_files.name, new_keys)
    job = build_definitions(settings).resolve_job_def("ingest")
    for key in new_keys:
        result = job.execute_in_process(
            instance=instance,
            partition_key=key,
            tags={TRIGGER_TAG: "cli"},
            run_config=QUIET,
            raise_on_error=False,
        )
        log(f"ingest {key}: {'ok' if result.success else 'rejected (see quarantine/)'}")
    return new_keys


def run_training(
    settings: Settings, instance: dg.DagsterInstance, trigger: str
) -> dg.ExecuteInProcessResult:
    from pipelines.definitions import build_definitions

    job = build_definitions(settings).resolve_job_def("training")
    return job.execute_in_process(
        instance=instance, tags={TRIGGER_TAG: trigger}, run_config=QUIET, raise_on_error=False
    )
