"""The serving log cursor: every record once, across segments, folds and bad files."""

import threading
import time
from pathlib import Path

import pandas as pd

from driftloop.logcursor import LogCursor, has_new, read_new
from driftloop.logwindows import QUARANTINE, segment_file, window_file
from driftloop.storage import Folder
from serving.prediction_log import FEEDBACK_SCHEMA, ParquetLog


def labels(start: int, count: int) -> pd.DataFrame:
    ids = [f"r{i}" for i in range(start, start + count)]
    return pd.DataFrame({"request_id": ids, "label": ["1"] * count})


def test_segments_then_their_window_file_are_read_once(tmp_path: Path) -> None:
    log, cursor = Folder(tmp_path / "feedback"), LogCursor()
    window = 1_800_000_000
    log.write_frame(segment_file(window, "w1", 0), labels(0, 3))
    log.write_frame(segment_file(window, "w1", 1), labels(3, 2))
    assert read_new(log, cursor).frame["request_id"].tolist() == [f"r{i}" for i in range(5)]
    assert not has_new(log, cursor) and read_new(log, cursor).frame.empty

    # The writer folds the two segments and a third it wrote since into the window file,
    # and a reader lists both before it removes the segments.
    log.write_frame(window_file(window, "w1"), labels(0, 7))
    assert has_new(log, cursor)
    assert read_new(log, cursor).frame["request_id"].tolist() == ["r5", "r6"]
    for sequence in (0, 1):
        log.delete(segment_file(window, "w1", sequence))
    # A window file is final: nothing more to read from it, and another writer's is new.
    log.write_frame(segment_file(window, "w2", 0), labels(100, 1))
    assert read_new(log, cursor).frame["request_id"].tolist() == ["r100"]
    assert read_new(log, cursor).frame.empty


def test_a_torn_file_is_skipped_counted_and_quarantined(tmp_path: Path) -> None:
    log, cursor = Folder(tmp_path / "feedback"), LogCursor()
    window = 1_800_000_000
    log.write_frame(segment_file(window, "w1", 0), labels(0, 2))
    log.write_bytes(segment_file(window, "w1", 1), b"PAR1 torn")
    log.write_frame(segment_file(window, "w1", 2), labels(2, 2))
    new = read_new(log, cursor)
    assert new.frame["request_id"].tolist() == ["r0", "r1", "r2", "r3"]
    assert [s.name for s in new.skipped] == [segment_file(window, "w1", 1)]
    assert new.skipped[0].quarantined and "not a readable Parquet file" in new.skipped[0].reason
    assert (tmp_path / "feedback" / QUARANTINE / segment_file(window, "w1", 1)).exists()
    again = read_new(log, cursor)
    assert again.frame.empty and again.skipped == ()


def test_old_windows_are_left_out_and_forgotten(tmp_path: Path) -> None:
    log, cursor = Folder(tmp_path / "feedback"), LogCursor()
    log.write_frame(window_file(1_000_000_000, "w1"), labels(0, 2))
    log.write_frame(window_file(1_800_000_000, "w1"), labels(2, 2))
    new = read_new(log, cursor, oldest=1_500_000_000)
    assert new.frame["request_id"].tolist() == ["r2", "r3"]
    assert list(cursor.positions) == [window_file(1_800_000_000, "w1")]
    assert LogCursor.from_json(cursor.to_json()) == cursor


def test_the_real_writer_folding_under_the_reader_loses_and_repeats_nothing(
    tmp_path: Path,
) -> None:
    """The serving log writer flushes segments every 20 ms and folds them when its 1 s
    windows end, while a reader with a cursor (saved and reloaded each time) keeps up."""
    folder = Folder(tmp_path / "feedback")
    log = ParquetLog(folder, FEEDBACK_SCHEMA, "w1", 1, 100_000, lambda n: None, 0.02)
    read: list[str] = []
    sent = 0
    cursor = LogCursor()
    stop = threading.Event()

    def write() -> None:
        nonlocal sent
        while not stop.is_set():
            log.append([{"request_id": f"r{sent}", "at": None, "label": "1"}])
            sent += 1
            time.sleep(0.002)

    writer = threading.Thread(target=write)
    writer.start()
    deadline = time.monotonic() + 3.5  # three window ends, so three folds
    while time.monotonic() < deadline:
        cursor = LogCursor.from_json(cursor.to_json())
        read += read_new(folder, cursor).frame.get("request_id", pd.Series()).tolist()
    stop.set()
    writer.join()
    log.close()
    read += read_new(folder, cursor).frame["request_id"].tolist()
    assert read == [f"r{i}" for i in range(sent)]
    windows = [f.name for f in folder.files((".parquet",)) if "." not in f.name[:-8]]
    assert len(windows) >= 3  # the folds happened under the reader
