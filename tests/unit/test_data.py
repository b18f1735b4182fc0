import io
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from driftloop.data import (
    BATCH_COLUMN,
    BatchStore,
    DataFileError,
    InvalidPartitionKey,
    build_training_set,
    bytes_sha256,
    content_hash,
    parse_partition_key,
    partition_key,
    quarantine,
    read_table,
    slug,
)
from driftloop.ingest import pending_files
from driftloop.schema import infer_schema
from driftloop.simulate import LoanStream
from driftloop.storage import Folder


@pytest.fixture
def rows() -> pd.DataFrame:
    frame = LoanStream(seed=3).take_frame(2000, "label")
    return frame.assign(**{BATCH_COLUMN: ["a"] * 1000 + ["b"] * 1000})


def test_content_hash_ignores_row_order_but_not_values(rows: pd.DataFrame) -> None:
    base = content_hash(rows)
    assert content_hash(rows.sample(frac=1, random_state=0)) == base
    changed = rows.copy()
    changed.loc[0, "salary"] += 1
    assert content_hash(changed) != base


def test_split_is_reproducible_and_stable_as_data_grows(rows: pd.DataFrame) -> None:
    schema = infer_schema(rows.drop(columns=[BATCH_COLUMN]), "label")
    first = build_training_set(rows.iloc[:1000], schema, 0.2, seed=1)
    again = build_training_set(rows.iloc[:1000], schema, 0.2, seed=1)
    grown = build_training_set(rows, schema, 0.2, seed=1)
    assert first.data_hash == again.data_hash
    pd.testing.assert_frame_equal(first.holdout, again.holdout)
    # A holdout row stays in the holdout when more data arrives: no leak across versions.
    merged = first.holdout.merge(grown.train, how="inner")
    assert merged.empty
    assert 0.15 < len(grown.holdout) / len(rows) < 0.25
    assert len(grown.recent) > 0 and len(grown.recent) < len(grown.holdout)
    assert grown.batches == ("a", "b")


def test_other_seed_gives_other_split(rows: pd.DataFrame) -> None:
    schema = infer_schema(rows.drop(columns=[BATCH_COLUMN]), "label")
    one = build_training_set(rows, schema, 0.2, seed=1)
    two = build_training_set(rows, schema, 0.2, seed=2)
    assert one.data_hash == two.data_hash
    assert not one.holdout.equals(two.holdout)


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("bad.parquet", b"not parquet at all", "unreadable .parquet file"),
        ("empty.csv", b"", "unreadable .csv file"),
        ("header.csv", b"a,b,label\n", "file has no rows"),
    ],
)
def test_read_table_turns_failures_into_reasons(name: str, content: bytes, reason: str) -> None:
    with pytest.raises(DataFileError, match=reason):
        read_table(name, content)


def test_quarantine_moves_file_and_records_reason(tmp_path: Path) -> None:
    landing, aside = Folder(tmp_path / "in"), Folder(tmp_path / "q")
    landing.write_bytes("in.csv", b"x\n1\n")
    moved = quarantine(landing, "in.csv", aside, ["schema: missing columns ['y']"])
    assert landing.files() == [] and Path(moved).read_text() == "x\n1\n"
    reason = json.loads(Path(moved + ".reason.json").read_text())
    assert reason["file"] == "in.csv" and reason["reasons"] == ["schema: missing columns ['y']"]


def test_pending_files_skips_known_content_and_unchanged_files(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("x,label\n1,0\n")
    (tmp_path / "copy-of-a.csv").write_text("x,label\n1,0\n")
    (tmp_path / ".partial.csv").write_text("x,label\n")
    (tmp_path / "notes.txt").write_text("ignored")
    landing = Folder(tmp_path)
    keys, fingerprints = pending_files(landing, [], {})
    assert len(keys) == 1 and keys[0].startswith("a.csv-")
    assert sorted(fingerprints) == ["a.csv", "copy-of-a.csv"]
    assert pending_files(landing, keys, {}) == ([], fingerprints)
    assert pending_files(landing, [], fingerprints) == ([], fingerprints)


def test_only_batches_gathered_wholly_after_a_change_count(tmp_path: Path) -> None:
    store = BatchStore(tmp_path)
    for key, landed_at, rows in [("a", 100, 5), ("b", 200, 6), ("c", 300, 7)]:
        path = store.write(key, pd.DataFrame({"x": range(rows)}))
        os.utime(path, (landed_at, landed_at))
    # "b" landed after the change at 150 but holds rows gathered since "a" landed at 100.
    assert store.keys_after(150) == ["c"] and store.rows_after(150) == 7
    assert store.keys_after(50) == ["a", "b", "c"]
    assert store.keys_after(301) == []


@pytest.mark.parametrize(
    "key",
    [
        "../../home/mlflow/mlflow.db-0123456789ab",
        "../secret.csv-0123456789ab",
        "/etc/passwd-0123456789ab",
        "sub/a.csv-0123456789ab",
        "a..b.csv-0123456789ab",
        ".hidden.csv-0123456789ab",
        "a b.csv-0123456789ab",
        "a.csv-0123456789ab\n",
        "a.csv-0123456789AB",
        "a.csv-0123456789a",
        "a.csv",
        "x" * 121 + "-0123456789ab",
    ],
)
def test_keys_driftloop_does_not_create_are_refused(key: str) -> None:
    with pytest.raises(InvalidPartitionKey, match="is refused: driftloop only creates keys"):
        parse_partition_key(key)


@pytest.mark.parametrize(
    "name",
    [
        "a.csv",
        "loans 2026, März.csv",
        "données été.parquet",
        "日本語.csv",
        "..csv",
        "-dash.csv",
        "a..b.csv",
        "semi;colon|pipe?.csv",
        "x" * 300 + ".csv",
        "bad\udcff.csv",
    ],
)
def test_every_key_driftloop_creates_parses_back_to_its_slug(name: str) -> None:
    digest = bytes_sha256(name.encode(errors="surrogateescape"))
    parsed = parse_partition_key(partition_key(name, digest))
    assert parsed.slug == slug(name) and digest.startswith(parsed.sha256_prefix)


def test_slugs_stay_readable() -> None:
    assert slug("a.csv") == "a.csv"  # keys of plain names are what they always were
    assert slug("loans 2026, März.csv") == "loans_2026_Marz.csv"
    assert slug("日本語.csv") == "_.csv"


def test_a_parquet_footer_over_the_cap_is_refused_before_decoding() -> None:
    buffer = io.BytesIO()
    pd.DataFrame({"x": np.zeros(100_000), "label": 1}).to_parquet(buffer)
    data = buffer.getvalue()
    assert len(data) < 20_000  # small on disk, 1.6 MB as a table
    with pytest.raises(DataFileError, match="too large to read: 100,000 rows x 2 columns"):
        read_table("bomb.parquet", data, max_table_bytes=1_000_000)
    assert len(read_table("bomb.parquet", data, max_table_bytes=2_000_000)) == 100_000


def test_quarantine_of_a_very_long_name_keeps_a_valid_file_name(tmp_path: Path) -> None:
    landing, aside = Folder(tmp_path / "in"), Folder(tmp_path / "q")
    name = "é" * 115 + ".csv"  # 234 bytes: with the stamp and ".reason.json" over 255
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / name).write_bytes(b"x\n1\n")
    moved = quarantine(landing, name, aside, ["schema: unreadable"])
    assert Path(moved).read_text() == "x\n1\n" and landing.files() == []
    assert json.loads(Path(f"{moved}.reason.json").read_text())["file"] == name


def test_pending_files_judges_each_entry_on_its_own(tmp_path: Path) -> None:
    zone = tmp_path / "zone"
    zone.mkdir()
    (tmp_path / "outside.csv").write_text("x,label\n9,9\n")
    (zone / "good.csv").write_text("x,label\n1,0\n")
    (zone / "big.csv").write_text("x,label\n" + "1,0\n" * 100)
    (zone / "link.csv").symlink_to(tmp_path / "outside.csv")
    (zone / "dir.csv").mkdir()
    os.mkfifo(zone / "pipe.parquet")
    skipped: dict[str, str] = {}
    landing = Folder(zone)
    keys, fingerprints = pending_files(landing, [], {}, 100, on_skip=skipped.__setitem__)
    assert [key.rsplit("-", 1)[0] for key in keys] == ["good.csv"]
    assert skipped == {
        "big.csv": "408 bytes, over the cap of 100 bytes (DRIFTLOOP_MAX_FILE_BYTES)",
        "dir.csv": "not a regular file but a directory",
        "link.csv": "a symbolic link: links are not followed; copy the file itself",
        "pipe.parquet": "not a regular file but a fifo",
    }
    assert sorted(fingerprints) == ["big.csv", "dir.csv", "good.csv", "link.csv", "pipe.parquet"]
    skipped.clear()
    assert pending_files(landing, keys, fingerprints, 100, on_skip=skipped.__setitem__) == (
        [],
        fingerprints,
    )
    assert skipped == {}  # reported once, not on every scan


def test_pending_files_advances_file_by_file_within_a_time_budget(tmp_path: Path) -> None:
    for index in range(3):
        (tmp_path / f"f{index}.csv").write_text(f"x,label\n{index},0\n")
    landing, found, fingerprints = Folder(tmp_path), [], {}
    for expected in (1, 2, 3, 3):
        keys, fingerprints = pending_files(landing, found, fingerprints, budget_s=0)
        found += keys
        assert len(found) == expected and len(fingerprints) == expected
