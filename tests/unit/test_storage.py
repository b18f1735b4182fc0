"""Folders behave the same on a local disk and on an S3 prefix (moto's S3 over HTTP)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pandas as pd
import pytest

from driftloop.storage import Folder, RefusedFile, UnsafeName


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


@pytest.mark.parametrize("name", ["../escape.csv", "..", ".", "", "sub/inner.csv", "/etc/passwd"])
def test_names_that_leave_the_folder_are_refused(folder: Folder, name: str) -> None:
    for touch in (folder.info, folder.read_bytes, folder.sha256):
        with pytest.raises(UnsafeName):
            touch(name)
    with pytest.raises(UnsafeName):
        folder.write_bytes(name, b"x")


def test_reads_are_capped_and_hashing_is_streamed(folder: Folder) -> None:
    data = bytes(range(256)) * 10_000  # more than one read chunk
    folder.write_bytes("big.csv", data)
    assert folder.sha256("big.csv") == hashlib.sha256(data).hexdigest()
    assert folder.read_bytes("big.csv", max_bytes=len(data)) == data
    for read in (folder.read_bytes, folder.sha256):
        with pytest.raises(RefusedFile, match="larger than the cap of 2,559,999 bytes"):
            read("big.csv", len(data) - 1)
    with pytest.raises(FileNotFoundError):
        folder.sha256("absent.csv")


def test_local_listing_reports_links_and_special_files_without_following_them(
    tmp_path: Path,
) -> None:
    outside = tmp_path / "outside.csv"
    outside.write_text("x\n1\n")
    folder = Folder(tmp_path / "zone")
    folder.write_bytes("plain.csv", b"x\n2\n")
    zone = folder.local_path
    (zone / "link.csv").symlink_to(outside)
    (zone / "dangling.csv").symlink_to(tmp_path / "gone.csv")
    (zone / "dir.csv").mkdir()
    os.mkfifo(zone / "pipe.csv")
    kinds = {entry.name: entry.kind for entry in folder.entries()}
    assert kinds == {
        "dangling.csv": "symlink",
        "dir.csv": "directory",
        "link.csv": "symlink",
        "pipe.csv": "fifo",
        "plain.csv": "file",
    }
    assert [f.name for f in folder.files()] == ["plain.csv"]
    assert folder.info("link.csv") is None and folder.info("pipe.csv") is None
    for name, reason in [("link.csv", "symbolic link"), ("pipe.csv", "not a regular file")]:
        with pytest.raises(RefusedFile, match=reason):
            folder.read_bytes(name)  # a FIFO is refused at once, not waited on
        with pytest.raises(RefusedFile, match=reason):
            folder.move_to(name, folder.child("aside"), name)
    assert (zone / "link.csv").is_symlink() and outside.read_text() == "x\n1\n"


def test_local_move_is_a_rename(tmp_path: Path) -> None:
    folder = Folder(tmp_path / "zone")
    folder.write_bytes("f.csv", b"x\n1\n")
    inode = (folder.local_path / "f.csv").stat().st_ino
    folder.move_to("f.csv", folder.child("aside"), "g.csv")
    assert (folder.local_path / "aside" / "g.csv").stat().st_ino == inode
