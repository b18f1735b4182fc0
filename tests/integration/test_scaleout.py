"""The scale-out deployment on real stores: Dagster on PostgreSQL with asset values and compute
logs in S3, MLflow as a tracking server on PostgreSQL with S3 artifacts, Optuna on PostgreSQL.

One throwaway PostgreSQL and one moto S3 endpoint serve the whole module; each test trains
its own registered model (DRIFTLOOP_MODEL_NAME), so the tests share servers, not state.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import optuna
import psycopg2
import pytest

from driftloop.hpo import open_study
from driftloop.registry import TAG_LINEAGE, TAG_SHA256, Registry
from driftloop.settings import Settings, load_settings
from driftloop.training import TRUSTED_TYPES
from tests.conftest import FAST_ENV, land, train
from tests.deploy.stack import (
    BUCKET,
    Stack,
    s3_keys,
    scaleout_stack,
    start_trial_workers,
    write_instance_yaml,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with scaleout_stack(tmp_path_factory.mktemp("stack")) as running:
        yield running


def configure(
    stack: Stack, root: Path, model: str, monkeypatch: pytest.MonkeyPatch, **extra: str
) -> Settings:
    """A driftloop home configured for the scale-out stack, as a run container would be."""
    env = {
        **stack.env(),
        **FAST_ENV,
        "DRIFTLOOP_HOME": str(root / "home"),
        "DAGSTER_HOME": str(root / "dagster"),
        "DRIFTLOOP_MODEL_NAME": model,
        # Each test its own prefixes: the bucket is shared by the module.
        "DRIFTLOOP_LANDING_DIR": f"s3://{BUCKET}/{model}/landing",
        "DRIFTLOOP_PREDICTION_LOG_DIR": f"s3://{BUCKET}/{model}/serving-log",
        **extra,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    write_instance_yaml(root / "dagster")
    return load_settings()


def versions(stack: Stack, model: str) -> dict[str, dict[str, str]]:
    """Every registered version of `model` with its tags, read from MLflow's own database."""
    rows = stack.postgres.query(
        "mlflow", "SELECT version, status FROM model_versions WHERE name = %s", model
    )
    tags = stack.postgres.query(
        "mlflow", "SELECT version, key, value FROM model_version_tags WHERE name = %s", model
    )
    found = {str(version): {"status": status} for version, status in rows}
    for version, key, value in tags:
        found[str(version)][key] = value
    return found


def test_training_lands_in_postgres_and_s3(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = configure(stack, tmp_path, "scaleout-train", monkeypatch)
    landed = land(settings, rows=3000, batch_rows=1500)
    settings.landing.write_bytes("broken.csv", b"salary,age\n1,2,3,4\n\x00\x00")
    result = train(settings)
    assert result.success
    run_id = result.run_id

    # Dagster: the run and its event log are rows in PostgreSQL, visible to a new instance.
    [(status,)] = stack.postgres.query(
        "dagster", "SELECT status FROM runs WHERE run_id = %s", run_id
    )
    assert status == "SUCCESS"
    events = {
        kind
        for (kind,) in stack.postgres.query(
            "dagster", "SELECT dagster_event_type FROM event_logs WHERE run_id = %s", run_id
        )
    }
    assert {"ASSET_MATERIALIZATION", "ASSET_CHECK_EVALUATION", "LOGS_CAPTURED"} <= events
    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert instance.get_run_by_id(run_id).is_success
        ingests = instance.get_runs(dg.RunsFilter(tags={"driftloop/kind": "ingest"}))
        outcomes = {run.tags["dagster/partition"].split("-")[0]: run.is_success for run in ingests}
        assert outcomes == {"loans": True, "broken.csv": False} and len(ingests) == 3

    # The landing zone is an S3 prefix: good files were ingested from it, the broken one
    # moved to its quarantine prefix with the reason next to it.
    # (pyarrow keeps a "folder/" marker object once a folder's last file is moved out)
    landing_keys = [
        k for k in s3_keys(stack.s3_endpoint, "scaleout-train/landing/") if not k.endswith("/")
    ]
    assert {f"scaleout-train/landing/{name}" for name in landed} <= set(landing_keys)
    quarantined = sorted(
        k.rsplit("/", 1)[1].split("-", 1)[1] for k in landing_keys if "/quarantine/" in k
    )
    assert quarantined == ["broken.csv", "broken.csv.reason.json"]
    assert len(list(settings.batches.glob("*.parquet"))) == 2

    # Step output was captured to S3 (any webserver replica can show it), asset values went
    # to the bucket rather than the home's local folder, as JSON and Parquet (no pickles).
    assert s3_keys(stack.s3_endpoint, f"dagster/compute-logs/storage/{run_id}/")
    io_keys = s3_keys(stack.s3_endpoint, "dagster/io/")
    assert {
        f"dagster/io/{name}/value.json"
        for name in ("training_dataset", "hpo_study", "candidate_model", "promotion_gate")
    } <= set(io_keys)
    assert {k.rsplit(".", 1)[-1] for k in io_keys if not k.endswith("/")} == {"json", "parquet"}
    assert not settings.io_dir.exists()

    # MLflow: a READY version with its digest and lineage, aliased, in the server's database.
    registered = versions(stack, "scaleout-train")
    assert len(registered) == 1
    [(version, tags)] = registered.items()
    assert tags["status"] == "READY" and len(tags[TAG_SHA256]) == 64 and tags[TAG_LINEAGE]
    aliases = dict(
        stack.postgres.query(
            "mlflow",
            "SELECT alias, version FROM registered_model_aliases WHERE name = %s",
            "scaleout-train",
        )
    )
    assert aliases["champion"] == int(version)
    # ...and its artifact bytes in the bucket, downloadable and matching the digest.
    artifacts = s3_keys(stack.s3_endpoint, "mlflow/")
    assert any(key.endswith("/model.skops") for key in artifacts)
    assert any(key.endswith("/MLmodel") for key in artifacts)
    registry = Registry(settings.mlflow_tracking_uri, "scaleout-train")
    assert registry.load_verified(version, TRUSTED_TYPES) is not None

    # Optuna: the study and its trials are in PostgreSQL.
    assert _trial_count(stack, "scaleout-train-%") == int(FAST_ENV["DRIFTLOOP_N_TRIALS"])


def test_two_processes_add_trials_to_one_study(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = configure(stack, tmp_path, "scaleout-shared", monkeypatch)
    study = "scaleout-shared-study"
    workers = start_trial_workers(study, trials_per_worker=3, workers=2, env=dict(os.environ))
    reports = [json.loads(worker.communicate(timeout=300)[0]) for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0]
    assert all(report["trials"] == 3 for report in reports)

    trials = open_study(settings, study).get_trials(deepcopy=False)
    assert sorted(trial.number for trial in trials) == list(range(6))
    assert Counter(trial.user_attrs["worker"] for trial in trials) == {"w0": 3, "w1": 3}
    assert all(trial.state == optuna.trial.TrialState.COMPLETE for trial in trials)
    # Both wrote at once: the two workers' busy intervals (first start to last finish) overlap.
    busy = {w: [t for t in trials if t.user_attrs["worker"] == w] for w in ("w0", "w1")}
    first_starts = [min(t.datetime_start for t in mine) for mine in busy.values()]
    last_finishes = [max(t.datetime_complete for t in mine) for mine in busy.values()]
    assert max(first_starts) < min(last_finishes)


def test_postgres_restart_mid_run_leaves_no_half_registered_version(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = "scaleout-restart"
    settings = configure(stack, tmp_path, model, monkeypatch, DRIFTLOOP_N_TRIALS="12")
    # Other rows than the first test's: the Dagster instance is shared, and ingestion skips
    # content it already has a partition for.
    land(settings, rows=3000, batch_rows=1500, seed=11)
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["result"] = train(settings)
        except Exception as error:  # a crashed run is an outcome to check, not a test error
            outcome["error"] = error

    worker = threading.Thread(target=run)
    worker.start()
    try:
        _wait_for_trials(stack, f"{model}-%", worker, outcome)
        stack.postgres.restart()
    finally:
        worker.join(timeout=600)
    assert not worker.is_alive()

    # The run ended and says so in PostgreSQL: success (every store rode out the restart) or
    # failure, never a run left STARTED.
    with dg.DagsterInstance.get() as instance:
        [run] = instance.get_runs(dg.RunsFilter(tags={"driftloop/kind": "training"}), limit=1)
        assert run.status in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE)
        _assert_whole_versions(stack, model)
        if run.status == dg.DagsterRunStatus.FAILURE:
            # What the daemon's run retry does: re-execute from the failed step. The steps
            # before it are not run again; their values come back from the S3 IO manager.
            retry = dg.execute_job(
                dg.reconstructable(training_job),
                instance,
                reexecution_options=dg.ReexecutionOptions.from_failure(run.run_id, instance),
            )
            assert retry.success
            executed = {event.step_key for event in retry.all_events if event.is_step_success}
            assert "training_dataset" not in executed and "promotion_gate" in executed
    assert len(_assert_whole_versions(stack, model)) == 1


def training_job() -> dg.JobDefinition:
    """The training job as a run worker rebuilds it (for `reconstructable`)."""
    from pipelines.definitions import build_definitions

    return build_definitions(load_settings()).resolve_job_def("training")


def _wait_for_trials(
    stack: Stack, pattern: str, worker: threading.Thread, outcome: dict[str, object]
) -> None:
    """Block until the run is inside the search (a trial exists), the worst moment to fail."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and worker.is_alive():
        if _trial_count(stack, pattern):
            return
        time.sleep(0.2)
    raise AssertionError(f"the training run never reached the search: {outcome}")


def _assert_whole_versions(stack: Stack, model: str) -> dict[str, dict[str, str]]:
    """Every version is READY with its digest and lineage; every alias points at one."""
    registered = versions(stack, model)
    for version, tags in registered.items():
        assert tags["status"] == "READY", version
        assert len(tags.get(TAG_SHA256, "")) == 64, version
        assert tags.get(TAG_LINEAGE), version
    aliased = stack.postgres.query(
        "mlflow", "SELECT version FROM registered_model_aliases WHERE name = %s", model
    )
    assert {str(version) for (version,) in aliased} <= set(registered)
    return registered


def _trial_count(stack: Stack, pattern: str) -> int:
    try:
        [(count,)] = stack.postgres.query(
            "optuna",
            "SELECT count(*) FROM trials JOIN studies USING (study_id) WHERE study_name LIKE %s",
            pattern,
        )
    except psycopg2.errors.UndefinedTable:  # Optuna creates its schema with the first study
        return 0
    return count
