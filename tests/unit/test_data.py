import json
import os
from pathlib import Path

import pandas as pd
import pytest

from driftloop.data import (
    BATCH_COLUMN,
    BatchStore,
    DataFileError,
    build_training_set,
    content_hash,
    quarantine,
    read_table,
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
