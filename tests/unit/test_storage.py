"""Folders behave the same on a local disk and on an S3 prefix (moto's S3 over HTTP)."""

from __future__ import annotations

import pandas as pd
import pytest

from driftloop.storage import Folder


def test_missing_folder_is_empty(folder: Folder) -> None:
    assert folder.files() == [] and folder.info("absent.csv") is None


def test_written_files_are_listed_whole_and_hidden_ones_skipped(folder: Folder) -> None:
    frame = pd.DataFrame({"x": [1, 2], "label": [0, 1]})
    folder.write_frame("b.parquet", frame)
    folder.write_frame("a.csv", frame)
    folder.child("sub").write_bytes("inner.csv", b"x\n1\n")
    with pytest.raises(RuntimeError), folder.publishing("c.csv") as stream:
        stream.write(b"x\n")
        raise RuntimeError("writer died half-way")
    upload = folder.upload("d.parquet")  # still open: invisible
    names = [f.name for f in folder.files()]
    assert names == ["a.csv", "b.parquet"]  # no sub-folder, no aborted or open upload
    assert [f.name for f in folder.files((".parquet",))] == ["b.parquet"]
    pd.testing.assert_frame_equal(folder.read_parquet(["b.parquet"])[0], frame)
    assert folder.read_bytes("a.csv") == b"x,label\n1,0\n2,1\n"
    upload.abort()
    assert [f.name for f in folder.files()] == names


def test_move_to_another_folder(folder: Folder) -> None:
    folder.write_bytes("f.csv", b"x\n1\n")
    aside = folder.child("quarantine")
    folder.move_to("f.csv", aside, "moved.csv")
    assert folder.info("f.csv") is None
    assert aside.read_bytes("moved.csv") == b"x\n1\n"
    assert aside.info("moved.csv").size == 4
