"""The ingest asset and its blocking checks, run as real Dagster materialisations."""

import json

import dagster as dg
import pandas as pd
import pytest

from assets.ingestion import landed_batch, landed_files
from driftloop.data import BatchStore, bytes_sha256, partition_key
from driftloop.settings import Settings
from pipelines.resources import build_resources
from tests.conftest import land


def materialize(
    settings: Settings, instance: dg.DagsterInstance, name: str
) -> dg.ExecuteInProcessResult:
    key = partition_key(name, bytes_sha256(settings.landing.read_bytes(name)))
    instance.add_dynamic_partitions(landed_files.name, [key])
    return dg.materialize(
        [landed_batch],
        partition_key=key,
        instance=instance,
        resources=build_resources(settings),
        raise_on_error=False,
    )


def checks_of(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


@pytest.fixture
def instance():
    with dg.DagsterInstance.ephemeral() as instance:
        yield instance


def test_good_file_is_accepted_whole(home: Settings, instance: dg.DagsterInstance) -> None:
    (name,) = land(home, rows=500, batch_rows=500, fmt="csv")
    result = materialize(home, instance, name)
    assert result.success
    assert all(checks_of(result).values()) and len(checks_of(result)) == 5
    (stored,) = BatchStore(home.batches).keys()
    assert len(pd.read_parquet(BatchStore(home.batches).path(stored))) == 500
    metadata = result.asset_materializations_for_node("landed_batch")[0].metadata
    assert metadata["status"].value == "accepted" and metadata["rows"].value == 500


def test_wrong_schema_file_is_quarantined_and_says_why(
    home: Settings, instance: dg.DagsterInstance
) -> None:
    (good,) = land(home, rows=500, batch_rows=500)
    assert materialize(home, instance, good).success
    landing = home.landing.local_path
    bad = landing / "bad.csv"
    pd.read_parquet(landing / good).drop(columns=["age"]).assign(label=3).to_csv(bad, index=False)
    result = materialize(home, instance, bad.name)
    assert checks_of(result) == {
        "schema": False,
        "nulls": True,
        "ranges": True,
        "label_set": False,
        "min_rows": True,
    }
    assert not bad.exists() and len(BatchStore(home.batches).keys()) == 1
    (reason_file,) = home.quarantine.local_path.glob("*.reason.json")
    reasons = json.loads(reason_file.read_text())["reasons"]
    assert reasons == [
        "schema: missing columns ['age']",
        "label_set: unknown labels [3] (allowed [0, 1])",
    ]


@pytest.mark.parametrize(
    ("name", "content"), [("corrupt.parquet", b"PAR1 garbage"), ("empty.csv", b"")]
)
def test_unreadable_file_is_quarantined_without_touching_the_store(
    home: Settings, instance: dg.DagsterInstance, name: str, content: bytes
) -> None:
    home.landing.write_bytes(name, content)
    result = materialize(home, instance, name)
    assert checks_of(result)["schema"] is False
    assert BatchStore(home.batches).keys() == []
    assert sorted(f.name.split("-", 1)[1] for f in home.quarantine.files()) == [
        name,
        f"{name}.reason.json",
    ]
    assert not home.schema_path.exists()  # a bad first file never defines the schema
