"""The serving log's writer publishes whole window files that the monitors read back, on a
local folder and on an S3 prefix alike."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pyarrow as pa

from driftloop.logwindows import window_file, window_start
from driftloop.monitoring import read_log
from driftloop.storage import Folder
from serving.prediction_log import FEEDBACK_SCHEMA, ParquetLog


def feedback(request_id: str) -> dict[str, object]:
    return {"request_id": request_id, "at": datetime.now(UTC), "label": "1"}


def test_window_files_are_published_whole_and_read_back(folder: Folder) -> None:
    dropped: list[int] = []
    log = ParquetLog(folder, FEEDBACK_SCHEMA, "w1", 3600, 10, dropped.append, 0.05)
    log.append([feedback(f"r{i}") for i in range(4)])
    time.sleep(0.5)  # flushed into the open window file, which is not published yet
    assert folder.files() == [] and read_log(folder).empty
    log.append([feedback(f"r{i}") for i in range(4, 16)])  # 2 over capacity: dropped
    log.close()
    (published,) = folder.files()
    assert published.name.endswith("-w1.parquet")
    assert sorted(read_log(folder)["request_id"]) == sorted(f"r{i}" for i in range(14))
    assert dropped == [2]


def test_a_record_arrow_cannot_take_is_dropped_and_the_writer_goes_on(folder: Folder) -> None:
    dropped: list[int] = []
    log = ParquetLog(folder, pa.schema([("n", pa.int64())]), "w2", 3600, 10, dropped.append, 0.05)
    log.append([{"n": 10**30}])  # beyond int64: pyarrow raises OverflowError
    time.sleep(0.3)
    log.append([{"n": 7}])
    log.close()
    assert dropped == [1] and list(read_log(folder)["n"]) == [7]


def test_reading_a_recent_window_skips_files_of_older_windows(folder: Folder) -> None:
    now = time.time()
    window = 60
    for start, request_id in [(now - 3600, "old"), (now - 30, "recent")]:
        # Both records claim to be recent: only the file names tell the windows apart.
        frame = pa.table({"request_id": [request_id], "at": [datetime.now(UTC)], "label": ["1"]})
        folder.write_frame(window_file(int(start // window) * window, "w3"), frame.to_pandas())
    since = datetime.fromtimestamp(now - 120, UTC)
    assert sorted(read_log(folder, since)["request_id"]) == ["old", "recent"]
    assert list(read_log(folder, since, window)["request_id"]) == ["recent"]
    assert window_start(window_file(1_800_000_000, "w3")) == 1_800_000_000
    assert window_start("notes.parquet") is None
