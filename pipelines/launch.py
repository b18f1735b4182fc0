"""Running driftloop's jobs on the configured instance from the command line.

The runs go through the same instance the webserver and daemon read, so a run started
by `driftloop train` appears in the Dagster UI like any other.
"""

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg

from assets.ingestion import landed_files
from driftloop.ingest import pending_files
from driftloop.settings import PROJECT_ROOT, Settings
from resources.deployment import TRIGGER_TAG

# The console shows progress (trial scores, decisions), not Dagster's per-event debug lines.
QUIET = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
# An ingest run says nothing on the console: a rejected file fails its blocking checks, and
# Dagster logs the failed step and run with a stack trace each (~25 lines per file); the CLI
# prints one line per file from the outcome instead. DRIFTLOOP_DEBUG=1 shows Dagster's log.
SILENT = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
DAEMON_FRESH_S = 60.0  # the daemon writes a heartbeat every few seconds
UNFINISHED = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]
# `driftloop.ingest` lists the checks an unreadable file could not reach as failed (so they
# block); they are not reasons a person can act on.
_NOT_EVALUATED = ": not evaluated"


@dataclass(frozen=True)
class Ingested:
    """What one ingest run did with one landed file, for a one-line report."""

    key: str
    accepted: bool
    rows: int | None
    location: str | None
    reasons: tuple[str, ...]

    def line(self) -> str:
        if self.accepted:
            return f"ingest {self.key}: accepted {self.rows} rows"
        where = f" -> {self.location}" if self.location else ""
        return f"ingest {self.key}: rejected{where}: {'; '.join(self.reasons)}"


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
) -> list[Ingested]:
    """Ingest every new landed file now, one partition run each (what the sensor requests),
    and `log` one line per file: accepted, or rejected with its reasons."""
    from pipelines.definitions import build_definitions

    _wait_for_sensor_ingests(instance, log)
    known = instance.get_dynamic_partitions(landed_files.name)
    new_keys, _ = pending_files(
        settings.landing,
        known,
        {},
        settings.max_file_bytes,
        on_skip=lambda name, reason: log(f"skipped {name!r}: {reason}"),
    )
    if not new_keys:
        return []
    instance.add_dynamic_partitions(landed_files.name, new_keys)
    job = build_definitions(settings).resolve_job_def("ingest")
    run_config = QUIET if os.environ.get("DRIFTLOOP_DEBUG") else SILENT
    done = []
    for key in new_keys:
        result = job.execute_in_process(
            instance=instance,
            partition_key=key,
            tags={TRIGGER_TAG: "cli"},
            run_config=run_config,
            raise_on_error=False,
        )
        ingested = _ingested(key, result)
        log(ingested.line())
        done.append(ingested)
    return done


def _wait_for_sensor_ingests(
    instance: dg.DagsterInstance, log: Callable[[str], None], timeout_s: float = 300.0
) -> None:
    """With a daemon running (`driftloop up`), let the ingest runs the landing sensor
    requested finish first: their files are known partitions already, so they are not
    ingested here, and training before they end would miss them. Without a live daemon a
    queued run never starts, and a run it left unfinished never ends: nothing to wait for."""
    unfinished = dg.RunsFilter(
        job_name="ingest", statuses=UNFINISHED, tags={TRIGGER_TAG: "landing"}
    )
    deadline = time.monotonic() + timeout_s
    waiting = instance.get_runs_count(unfinished) if _daemon_alive(instance) else 0
    if waiting:
        log(f"waiting for {waiting} ingest run(s) the landing sensor started …")
    while waiting and time.monotonic() < deadline and _daemon_alive(instance):
        time.sleep(1)
        waiting = instance.get_runs_count(unfinished)


def _daemon_alive(instance: dg.DagsterInstance) -> bool:
    beats = instance.get_daemon_heartbeats().values()
    return any(time.time() - beat.timestamp < DAEMON_FRESH_S for beat in beats)


def _ingested(key: str, result: dg.ExecuteInProcessResult) -> Ingested:
    """The outcome from the batch's materialization metadata; a run that failed before
    materializing (the file vanished or changed) is rejected with its error."""
    found = result.asset_materializations_for_node("landed_batch")
    if not found:
        return Ingested(key, False, None, None, (run_failure(result),))
    metadata = found[-1].metadata
    reasons = [r for r in metadata["reasons"].value if _NOT_EVALUATED not in r]
    return Ingested(
        key,
        accepted=metadata["status"].value == "accepted",
        rows=metadata["rows"].value,
        location=str(metadata["location"].value),
        reasons=tuple(reasons),
    )


def run_failure(result: Any) -> str:
    """One sentence for why a run failed: the root cause of its failed step, else the
    first failed check."""
    for event in result.all_events:
        if event.is_failure and event.step_failure_data is not None:
            error = event.step_failure_data.error
            while error.cause is not None:  # the root cause is what the user can act on
                error = error.cause
            return error.message.strip().splitlines()[0]
    for event in result.all_events:
        if event.event_type_value == "ASSET_CHECK_EVALUATION":
            data = event.event_specific_data.asset_check_evaluation
            if not data.passed:
                return f"check {data.check_name} failed: {data.description}"
    return "see the run in the Dagster UI"


def run_training(
    settings: Settings, instance: dg.DagsterInstance, trigger: str, trials: int | None = None
) -> dg.ExecuteInProcessResult:
    """One training run; `trials` goes in as the search's run config (`SearchConfig`), as
    a launchpad edit would, so the run records the budget it was given."""
    from pipelines.definitions import build_definitions
    from pipelines.jobs import TRAINING_RUN_CONFIG

    job = build_definitions(settings).resolve_job_def("training")
    search = {} if trials is None else {"trials": trials}
    return job.execute_in_process(
        instance=instance,
        tags={TRIGGER_TAG: trigger},
        run_config={
            **QUIET,
            "ops": {**TRAINING_RUN_CONFIG["ops"], "hpo_study": {"config": search}},
        },
        raise_on_error=False,
    )
