"""The whole training pipeline on a temporary home: real Dagster, MLflow and Optuna stores."""

import json
from pathlib import Path
from urllib.parse import urlparse

import dagster as dg
import pytest
from mlflow import MlflowClient

from assets.canary import TAG_WEIGHT
from cli.main import main
from driftloop.promotion import QUEUED_ACTION
from driftloop.registry import (
    CANDIDATE,
    CHALLENGER,
    CHAMPION,
    PREVIOUS,
    TAG_ROLLED_BACK,
    TAG_SHA256,
    ArtifactIntegrityError,
    Registry,
    directory_sha256,
)
from driftloop.settings import Settings
from driftloop.training import TRUSTED_TYPES
from serving.launch import free_port
from tests.conftest import land, train
from tests.integration.test_aliases import Watcher

pytestmark = pytest.mark.integration


def registry_of(settings: Settings) -> Registry:
    return Registry(settings.mlflow_tracking_uri, settings.model_name)


def stored_model_dir(settings: Settings, version: str) -> Path:
    """The logged model's folder in the artifact store, found without our download code."""
    uri = settings.mlflow_tracking_uri  # its registry too: not the process-wide one
    client = MlflowClient(uri, registry_uri=uri)
    source = client.get_model_version(settings.model_name, version).source  # models:/<id>
    model_id = source.removeprefix("models:/")
    return Path(urlparse(client.get_logged_model(model_id).artifact_location).path)


def test_first_run_registers_a_champion_with_lineage(trained_home: Settings) -> None:
    registry = registry_of(trained_home)
    champion = registry.by_alias(CHAMPION)
    assert champion is not None and champion.version == "1"
    assert registry.record().aliases == {CHAMPION: "1"}  # auto: @candidate became @champion
    tags = champion.tags
    assert len(tags["driftloop.data_hash"]) == 64
    assert tags["driftloop.trigger"] == "test"
    assert tags["driftloop.lineage"] == tags["driftloop.study"]
    assert tags["driftloop.decision.promote"] == "True"
    assert json.loads(tags["driftloop.params"])["family"] in {
        "hist_gradient_boosting",
        "logistic_regression",
    }
    assert len(tags["driftloop.git_commit"]) in (40, len("unknown"))
    assert "## Holdout" in champion.description and "**promote** (applied)" in champion.description

    client = MlflowClient(trained_home.mlflow_tracking_uri)
    children = client.search_runs(
        [client.get_run(champion.run_id).info.experiment_id],
        f"tags.mlflow.parentRunId = '{champion.run_id}'",
    )
    assert len(children) == 4  # DRIFTLOOP_N_TRIALS in the test environment
    assert {c.data.tags["optuna.state"] for c in children} <= {"COMPLETE", "PRUNED"}
    # Each family's defaults run first, whatever TPE's random start would have picked.
    assert {c.data.params["family"] for c in children} == {
        "hist_gradient_boosting",
        "logistic_regression",
    }
    assert client.get_run(champion.run_id).data.metrics["holdout_accuracy"] > 0.7


def test_sha256_tag_matches_the_stored_artifact_bytes(trained_home: Settings) -> None:
    champion = registry_of(trained_home).by_alias(CHAMPION)
    assert champion.sha256 == directory_sha256(stored_model_dir(trained_home, champion.version))
    assert champion.tags[TAG_SHA256] == champion.sha256


def test_tampered_artifact_is_refused(trained_home: Settings) -> None:
    registry = registry_of(trained_home)
    model_file = stored_model_dir(trained_home, "1") / "model.skops"
    original = model_file.read_bytes()
    try:
        model_file.write_bytes(original + b"\0")
        with pytest.raises(ArtifactIntegrityError, match="does not match"):
            registry.load_verified("1", TRUSTED_TYPES)
    finally:
        model_file.write_bytes(original)
    assert registry.load_verified("1", TRUSTED_TYPES).predict_proba is not None


def test_rerun_on_unchanged_data_registers_nothing(trained_home: Settings) -> None:
    before = registry_of(trained_home).client.search_model_versions(
        f"name='{trained_home.model_name}'"
    )
    result = train(trained_home, trigger="rerun")
    assert result.success
    assert result.output_for_node("hpo_study").new_trials == 0
    assert not result.output_for_node("candidate_model").newly_registered
    after = registry_of(trained_home).client.search_model_versions(
        f"name='{trained_home.model_name}'"
    )
    assert len(after) == len(before)
    gate = result.output_for_node("promotion_gate")
    assert not gate.promote and "already the champion" in gate.reason


def test_corrupt_file_is_quarantined_while_good_files_are_ingested(home: Settings) -> None:
    land(home, rows=1200, batch_rows=600)
    home.landing.write_bytes("broken.csv", b"salary,age\n1,2,3,4\n\x00\x00")
    result = train(home)
    assert result.success
    assert len(list(home.batches.glob("*.parquet"))) == 2
    (reason,) = home.quarantine.local_path.glob("*.reason.json")
    assert json.loads(reason.read_text())["file"] == "broken.csv"
    assert registry_of(home).by_alias(CHAMPION).version == "1"


def test_training_without_data_fails_with_a_sentence(home: Settings, capsys) -> None:
    assert main(["train", "--trials", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("driftloop: no accepted data yet: put CSV or Parquet files")
    assert "\n" not in err


def test_new_data_challenges_then_cli_promotes_and_rolls_back(
    home: Settings, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("DRIFTLOOP_PROMOTION_POLICY", "manual")
    monkeypatch.setenv("DRIFTLOOP_PROMOTION_FLOOR", "0.5")
    land(home, rows=1500, batch_rows=1500, seed=1)
    assert main(["train", "--trials", "3"]) == 0  # the budget goes in as the run's config
    with dg.DagsterInstance.get() as instance:
        (run,) = instance.get_runs(filters=dg.RunsFilter(job_name="training"))
    assert run.run_config["ops"]["hpo_study"]["config"] == {"trials": 3}
    registry = registry_of(home)
    client = MlflowClient(home.mlflow_tracking_uri)
    parent = client.get_run(registry.version("1").run_id)
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert len(children) == 3  # not FAST_ENV's 4
    # Manual policy: the gate only recommends, and the version waits as @candidate.
    assert registry.record().aliases == {CANDIDATE: "1"}

    assert main(["promote", "1"]) == 0
    land(home, rows=1500, batch_rows=1500, seed=2)
    gate = train(home).output_for_node("promotion_gate")
    assert gate.challenger_version == "2" and not gate.applied
    assert registry.record().aliases == {CHAMPION: "1", CANDIDATE: "2"}
    assert main(["promote", "2"]) == 0
    assert registry.record().aliases == {CHAMPION: "2", PREVIOUS: "1"}
    assert main(["promote", "2"]) == 0  # a retried promote changes nothing
    assert "v2 is already @champion" in capsys.readouterr().out

    assert main(["rollback"]) == 0
    assert registry.record().aliases == {CHAMPION: "1"}
    assert registry.version("2").tags[TAG_ROLLED_BACK] == "replaced by v1"
    assert main(["rollback"]) == 2  # a retried rollback never brings v2 back
    assert registry.by_alias(CHAMPION).version == "1"
    capsys.readouterr()
    assert main(["status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["aliases"]["champion"]["version"] == "1"
    assert status["aliases"]["champion"]["sha256"] == registry.version("1").sha256
    assert status["dataset"]["target"] == "label" and "salary" in status["dataset"]["features"]
    assert status["last_ingest"]["batches"] == 2
    assert status["last_run"]["job"] == "training" and status["last_run"]["status"] == "SUCCESS"

    assert main(["promote", "99"]) == 2
    assert "has no version 99" in capsys.readouterr().err


def test_runs_are_in_the_homes_own_dagster_instance(trained_home: Settings) -> None:
    assert (trained_home.home / "dagster" / "dagster.yaml").exists()
    instance = dg.DagsterInstance.from_config(str(trained_home.home / "dagster"))
    jobs = {r.dagster_run.job_name for r in instance.get_run_records()}
    assert jobs == {"ingest", "training"}


def test_canary_policy_hands_over_queues_behind_a_running_canary_and_withdraws_failures(
    home: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DRIFTLOOP_PROMOTION_POLICY", "canary")
    land(home, rows=1500, batch_rows=1500, seed=1)
    first = train(home).output_for_node("promotion_gate")
    assert first.applied  # nothing to canary against: the first model is promoted
    registry = registry_of(home)

    monkeypatch.setenv("DRIFTLOOP_PROMOTION_MARGIN", "-1")  # any challenger passes offline
    monkeypatch.setenv("DRIFTLOOP_SLICE_MARGIN", "1")  # on every slice too (slices: elsewhere)
    monkeypatch.setenv("DRIFTLOOP_SERVING_URL", f"http://127.0.0.1:{free_port()}")  # no one
    land(home, rows=1500, batch_rows=1500, seed=2)
    trained = train(home)
    assert trained.success
    passing = trained.output_for_node("promotion_gate")
    assert passing.promote and not passing.applied
    assert passing.action == "handed to the canary analysis"
    assert registry.by_alias(CHALLENGER).version == "2"
    assert registry.by_alias(CHAMPION).version == "1"
    # No serving answers: the run succeeds and leaves the canary's start to the canary job.
    started = trained.asset_materializations_for_node("canary_decision")[0].metadata
    assert started["verdict"].value == "idle", started
    assert "serving unreachable" in started["reason"].value
    assert TAG_WEIGHT not in registry.by_alias(CHALLENGER).tags

    # v2's canary now runs at 50 %: retrains that follow must never take its @challenger.
    registry.set_tags("2", {TAG_WEIGHT: 0.5})
    with Watcher(registry) as watcher:
        monkeypatch.setenv("DRIFTLOOP_PROMOTION_MARGIN", "1")  # no challenger can pass
        land(home, rows=1500, batch_rows=1500, seed=3)
        failing = train(home).output_for_node("promotion_gate")
        assert not failing.promote and failing.action == "withdrawn from @candidate"
        assert registry.record().aliases == {CHAMPION: "1", CHALLENGER: "2"}

        monkeypatch.setenv("DRIFTLOOP_PROMOTION_MARGIN", "-1")
        land(home, rows=1500, batch_rows=1500, seed=4)
        queued = train(home).output_for_node("promotion_gate")
    assert queued.challenger_version == "4" and queued.action == f"{QUEUED_ACTION} of v2"
    assert registry.record().aliases == {CHAMPION: "1", CHALLENGER: "2", CANDIDATE: "4"}
    # What serving could have read during both retrains: never an ungated version.
    assert {version for _, version in watcher.seen} == {"1", "2"}

    registry.end_canary("2", promoted=True, expected_champion="1")  # v2's canary ends
    assert registry.record().aliases == {CHAMPION: "2", PREVIOUS: "1", CHALLENGER: "4"}
