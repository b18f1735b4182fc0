"""The ingest asset and its blocking checks, run as real Dagster materialisations."""

import json

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from assets.ingestion import landed_batch, landed_files
from driftloop.data import BatchStore, bytes_sha256, partition_key
from driftloop.settings import Settings
from pipelines.launch import run_failure
from resources.deployment import build_resources
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


def run_key(
    settings: Settings, instance: dg.DagsterInstance, key: str
) -> dg.ExecuteInProcessResult:
    instance.add_dynamic_partitions(landed_files.name, [key])
    return dg.materialize(
        [landed_batch],
        partition_key=key,
        instance=instance,
        resources=build_resources(settings),
        raise_on_error=False,
    )


def test_hand_made_keys_are_refused_before_any_file_is_touched(
    home: Settings, instance: dg.DagsterInstance
) -> None:
    """Keys added from the UI must not name files outside the landing zone: a valid batch
    next to it would be read (and, failing validation, moved away) by such a key."""
    (landed,) = land(home, rows=200, batch_rows=200)
    secret = home.home / "secret.parquet"
    (home.landing.local_path / landed).rename(secret)
    digest = bytes_sha256(secret.read_bytes())[:12]
    for key in [
        f"../secret.parquet-{digest}",
        f"../../{home.home.name}/secret.parquet-{digest}",
        f"{secret}-{digest}",
        f"sub/x.parquet-{digest}",
        "x.parquet",
    ]:
        result = run_key(home, instance, key)
        assert not result.success
        assert "is refused: driftloop only creates keys" in run_failure(result)
    assert bytes_sha256(secret.read_bytes())[:12] == digest
    assert BatchStore(home.batches).keys() == [] and not home.batches.exists()
    assert home.quarantine.files() == [] and not home.schema_path.exists()


def test_a_symlinked_file_is_never_read_or_moved(
    home: Settings, instance: dg.DagsterInstance
) -> None:
    (landed,) = land(home, rows=200, batch_rows=200)
    outside = home.home / "outside.parquet"
    (home.landing.local_path / landed).rename(outside)
    link = home.landing.local_path / "link.parquet"
    link.symlink_to(outside)
    result = run_key(home, instance, partition_key(link.name, bytes_sha256(outside.read_bytes())))
    assert not result.success
    assert "link.parquet: a symbolic link: links are not followed" in run_failure(result)
    assert link.is_symlink() and outside.is_file()
    assert BatchStore(home.batches).keys() == [] and home.quarantine.files() == []


def test_a_file_over_the_size_cap_is_not_read(
    home: Settings, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DRIFTLOOP_MAX_FILE_BYTES", "1000")
    (name,) = land(home, rows=200, batch_rows=200)
    result = run_key(
        home, instance, partition_key(name, bytes_sha256(home.landing.read_bytes(name)))
    )
    assert not result.success
    assert "over the cap of 1,000 bytes (DRIFTLOOP_MAX_FILE_BYTES)" in run_failure(result)
    assert home.landing.info(name) is not None and BatchStore(home.batches).keys() == []


def test_a_parquet_bomb_is_quarantined_from_its_footer(
    home: Settings, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A few kilobytes on disk that decode to 32 MB: refused before a column is decoded."""
    monkeypatch.setenv("DRIFTLOOP_MAX_TABLE_BYTES", str(8 * 2**20))
    bomb = pd.DataFrame({"x": np.zeros(2_000_000), "label": np.zeros(2_000_000, dtype=int)})
    home.landing.write_frame("bomb.parquet", bomb)
    assert home.landing.info("bomb.parquet").size < 100_000
    result = materialize(home, instance, "bomb.parquet")
    assert checks_of(result)["schema"] is False
    (reason_file,) = home.quarantine.local_path.glob("*.reason.json")
    reason = json.loads(reason_file.read_text())["reasons"][0]
    assert reason.startswith("schema: too large to read: 2,000,000 rows x 2 columns, ")
    assert reason.endswith("over the cap of 8,388,608 bytes (DRIFTLOOP_MAX_TABLE_BYTES)")
    assert BatchStore(home.batches).keys() == [] and not home.schema_path.exists()
