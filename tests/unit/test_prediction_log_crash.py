"""The serving log survives its writer: a SIGKILL loses only the last flush interval, the
next start tidies up what a dead writer left, a store error is retried once and counted,
and a corrupt published file is quarantined and skipped instead of failing the reader."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from driftloop.logwindows import QUARANTINE, segment_file, window_file
from driftloop.monitoring import read_log
from driftloop.settings import PROJECT_ROOT
from driftloop.storage import Folder
from serving.prediction_log import FEEDBACK_SCHEMA, STALE_S, ParquetLog
from tests.waits import wait_until

# Appends one record, then prints its number, until killed.
VICTIM = """
import sys, time
from datetime import UTC, datetime
from driftloop.storage import Folder
from serving.prediction_log import FEEDBACK_SCHEMA, ParquetLog
folder = Folder(sys.argv[1], sys.argv[2] or None)
log = ParquetLog(folder, FEEDBACK_SCHEMA, "victim", 3600, 10**7, lambda n: None, float(sys.argv[3]))
i = 0
while True:
    log.append([{"request_id": str(i), "id": None, "at": datetime.now(UTC), "label": "1"}])
    print(i, flush=True)
    i += 1
    time.sleep(0.002)
"""


def feedback(request_id: str) -> dict[str, object]:
    return {"request_id": request_id, "id": None, "at": datetime.now(UTC), "label": "1"}


def parquet_bytes(*request_ids: str) -> bytes:
    sink = pa.BufferOutputStream()
    table = pa.Table.from_pylist([feedback(r) for r in request_ids], schema=FEEDBACK_SCHEMA)
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def test_a_sigkilled_writer_loses_at_most_its_last_flush_interval(folder: Folder) -> None:
    flush_s = 1.0
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    victim = subprocess.Popen(
        [sys.executable, "-c", VICTIM, folder.url, folder.s3_endpoint_url or "", str(flush_s)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    appended: list[int] = []
    reader = threading.Thread(target=lambda: appended.extend(int(n) for n in victim.stdout))
    reader.start()
    try:
        wait_until(lambda: len(appended) > 1000 and len(folder.files()) >= 2)
    finally:
        killed_at = datetime.now(UTC)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        reader.join()
    frame = read_log(folder)
    kept = sorted(int(r) for r in frame["request_id"])
    assert frame.attrs["skipped_files"] == []  # every published file reads whole
    assert kept == list(range(len(kept)))  # a prefix: no gap, no duplicate
    lost = len(appended) - len(kept)
    newest = frame["at"].max()
    print(f"SIGKILL after {len(appended)} records: {lost} lost ({killed_at - newest} unflushed)")
    # What the queue held since the last flush, plus one flush's write: never the window.
    assert (killed_at - newest).total_seconds() <= 2 * flush_s + 1.0


def test_the_next_start_tidies_up_after_a_dead_writer(tmp_path: Path) -> None:
    """Closed but never published: published; partial: removed; segments of an ended window
    folded; a live writer's fresh files untouched."""
    folder = Folder(tmp_path / "log")
    root = Path(folder.root)
    root.mkdir()
    old = int(time.time() // 60) * 60 - 3600
    now = int(time.time() // 60) * 60
    whole = window_file(old, "dead1")
    files = {
        f".{whole}.0a1b2c3d.inprogress": parquet_bytes("closed-1", "closed-2"),
        f".{segment_file(old, 'dead2', 4)}.1a2b3c4d.inprogress": parquet_bytes("p")[:-30],
        segment_file(old, "dead3", 0): parquet_bytes("seg-1"),
        segment_file(old, "dead3", 1): parquet_bytes("seg-2", "seg-3"),
        window_file(old, "dead4"): parquet_bytes("folded"),
        segment_file(old, "dead4", 0): parquet_bytes("folded"),  # its fold left it behind
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
        os.utime(root / name, (time.time() - 2 * STALE_S,) * 2)
    live_hidden = f".{segment_file(now, 'alive', 9)}.2a3b4c5d.inprogress"
    (root / live_hidden).write_bytes(b"being written")
    (root / segment_file(now, "alive", 8)).write_bytes(parquet_bytes("live"))

    ParquetLog(folder, FEEDBACK_SCHEMA, "next", 60, 10, print, 0.05).close()

    assert sorted(p.name for p in root.iterdir()) == sorted(
        [
            live_hidden,
            segment_file(now, "alive", 8),
            whole,
            window_file(old, "dead3"),
            window_file(old, "dead4"),
        ]
    )
    frame = read_log(folder)
    assert sorted(frame["request_id"]) == sorted(
        ["closed-1", "closed-2", "seg-1", "seg-2", "seg-3", "folded", "live"]
    )


def test_a_store_error_is_retried_once_then_counted_and_the_writer_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing is lost silently: every record is published or counted as dropped, and the
    writer publishes whole files again once the store is back."""
    folder = Folder(tmp_path / "log")
    dropped: list[int] = []
    log = ParquetLog(folder, FEEDBACK_SCHEMA, "w1", 3600, 10_000, dropped.append, 0.05)
    log.append([feedback("before")])
    wait_until(lambda: len(read_log(folder)) == 1)
    aside = tmp_path / "aside"
    os.rename(folder.root, aside)
    Path(folder.root).write_text("not a directory: every write fails")
    with caplog.at_level(logging.ERROR, logger="serving.prediction_log"):
        for i in range(20):
            log.append([feedback(f"outage-{i}")])
            time.sleep(0.02)
        wait_until(
            lambda: len([r for r in caplog.records if "could not publish" in r.getMessage()]) >= 3
        )
    os.remove(folder.root)
    os.rename(aside, folder.root)
    log.append([feedback("after")])
    log.close()
    frame = read_log(folder)
    assert frame.attrs["skipped_files"] == []
    assert {"before", "after"} <= set(frame["request_id"])
    assert len(frame) + sum(dropped) == 22
    assert sum(dropped) > 0  # the outage outlasted one retry


def test_a_corrupt_file_is_quarantined_and_skipped_with_a_count(folder: Folder) -> None:
    start = int(time.time() // 60) * 60
    folder.write_bytes(window_file(start, "good"), parquet_bytes("kept"))
    folder.write_bytes(window_file(start, "garbage"), b"not parquet at all")
    folder.write_bytes(window_file(start, "cut"), parquet_bytes("lost")[:-40])

    frame = read_log(folder)
    assert list(frame["request_id"]) == ["kept"]
    skipped = {s["name"]: s for s in frame.attrs["skipped_files"]}
    assert set(skipped) == {window_file(start, "garbage"), window_file(start, "cut")}
    assert all(s["quarantined"] and "Parquet" in s["reason"] for s in skipped.values())
    quarantine = folder.child(QUARANTINE)
    reason = json.loads(quarantine.read_bytes(f"{window_file(start, 'cut')}.reason.json"))
    assert reason["file"] == window_file(start, "cut") and "Parquet" in reason["reason"]
    again = read_log(folder)
    assert list(again["request_id"]) == ["kept"] and again.attrs["skipped_files"] == []


def test_a_window_file_and_its_leftover_segments_are_read_once(folder: Folder) -> None:
    start = int(time.time() // 60) * 60
    folder.write_bytes(window_file(start, "w"), parquet_bytes("a", "b"))
    folder.write_bytes(segment_file(start, "w", 0), parquet_bytes("a"))
    folder.write_bytes(segment_file(start, "other", 0), parquet_bytes("c"))
    assert sorted(read_log(folder)["request_id"]) == ["a", "b", "c"]


def test_a_writer_id_that_could_be_read_as_a_segment_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="plain name"):
        ParquetLog(Folder(tmp_path), FEEDBACK_SCHEMA, "w.1", 60, 10, print)
