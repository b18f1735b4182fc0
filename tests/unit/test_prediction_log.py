"""The serving log's writer publishes whole window files that the monitors read back, on a
local folder and on an S3 prefix alike."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pyarrow as pa

from driftloop.logwindows import window_file, window_start
from driftloop.monitoring import read_log
from driftloop.storage import Folder
from serving.prediction_log import FEEDBACK_SCHEMA, ParquetLog, prediction_schema
from serving.schemas import FeatureField
from tests.waits import wait_until


def feedback(request_id: str) -> dict[str, object]:
    return {"request_id": request_id, "id": None, "at": datetime.now(UTC), "label": "1"}


def test_records_are_published_each_flush_and_folded_when_the_window_ends(
    folder: Folder,
) -> None:
    dropped: list[int] = []
    log = ParquetLog(folder, FEEDBACK_SCHEMA, "w1", 3600, 10, dropped.append, 0.05)
    log.append([feedback(f"r{i}") for i in range(4)])
    # Within a flush interval, not at the window's end: a crash now loses none of them.
    wait_until(lambda: len(read_log(folder)) == 4)
    (segment,) = folder.files()
    assert segment.name.endswith("-w1.000000.parquet")
    log.append([feedback(f"r{i}") for i in range(4, 16)])  # 2 over capacity: dropped
    wait_until(lambda: len(folder.files()) == 2)
    log.close()  # folds the window's segments into one file
    (published,) = folder.files()
    assert published.name.endswith("-w1.parquet")
    assert sorted(read_log(folder)["request_id"]) == sorted(f"r{i}" for i in range(14))
    assert dropped == [2]


def test_a_record_arrow_cannot_take_is_dropped_and_the_writer_goes_on(folder: Folder) -> None:
    dropped: list[int] = []
    log = ParquetLog(folder, pa.schema([("n", pa.int64())]), "w2", 3600, 10, dropped.append, 0.05)
    log.append([{"n": 10**30}])  # beyond int64: pyarrow raises OverflowError
    wait_until(lambda: dropped == [1])  # its flush is over: the next record is a flush of its own
    log.append([{"n": 7}])
    log.close()
    assert dropped == [1] and list(read_log(folder)["n"]) == [7]


def test_a_bad_record_is_dropped_alone_never_its_neighbours_in_the_batch(folder: Folder) -> None:
    """One flush holds every client's records: a record pyarrow refuses (here beyond int64,
    as a float feature's 2**63 once was) is retried alone and only it is lost."""
    dropped: list[int] = []
    schema = pa.schema([("n", pa.int64()), ("who", pa.string())])
    log = ParquetLog(folder, schema, "w6", 3600, 100, dropped.append, 60)  # one flush: close
    log.append([{"n": 1, "who": "a"}, {"n": 2**63, "who": "bad"}, {"n": 3, "who": "a"}])
    log.append([{"n": 4, "who": "b"}, {"n": "five", "who": "bad"}])
    log.append([{"n": 6, "who": "c"}])
    log.close()
    frame = read_log(folder)
    assert sorted(frame["n"]) == [1, 3, 4, 6] and "bad" not in set(frame["who"])
    assert dropped == [1, 1]


def test_the_queue_is_bounded_in_bytes_too(folder: Folder) -> None:
    dropped: list[int] = []
    log = ParquetLog(folder, FEEDBACK_SCHEMA, "w7", 3600, 1000, dropped.append, 60, 1000)
    big = {**feedback("big"), "label": "x" * 600}
    log.append([feedback("r0"), big, feedback("r1")])  # ~650 bytes
    log.append([big])  # would pass 1,000: dropped
    log.append([feedback("r2")])  # small ones still fit
    log.close()
    assert sorted(read_log(folder)["request_id"]) == ["big", "r0", "r1", "r2"]
    assert dropped == [1]


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


def test_predictions_keep_ids_probabilities_unseen_and_missing_features(folder: Folder) -> None:
    features = (
        FeatureField("age", "int", nullable=True),
        FeatureField("owner", "bool", nullable=True),
        FeatureField("colour", "str"),
    )
    common = {"at": datetime.now(UTC), "model_version": "3", "route": "champion", "key": None}
    common |= {"prediction": "1", "latency_ms": 2.5}
    records = [
        {**common, "request_id": "r1", "index": 0, "id": "loan-7", "probability": 0.75}
        | {"probabilities": [0.25, 0.75], "unseen": None, "age": 41, "owner": True}
        | {"colour": "red"},
        {**common, "request_id": "r1", "index": 1, "id": None, "probability": 0.5}
        | {"probabilities": [0.5, 0.5], "unseen": "colour", "age": None, "owner": None}
        | {"colour": "mauve"},
    ]
    predictions, labels = folder.child("predictions"), folder.child("feedback")
    log = ParquetLog(predictions, prediction_schema(features), "w4", 3600, 10, print, 0.05)
    log.append(records)
    log.close()
    frame = read_log(predictions)
    assert frame["id"].tolist() == ["loan-7", None]
    assert [list(p) for p in frame["probabilities"]] == [[0.25, 0.75], [0.5, 0.5]]
    assert frame["unseen"].tolist() == [None, "colour"]
    assert frame["owner"].tolist() == [True, None] and frame["age"].isna().tolist() == [False, True]
    log = ParquetLog(labels, FEEDBACK_SCHEMA, "w5", 3600, 10, print, 0.05)
    log.append([{"request_id": None, "id": "loan-7", "at": datetime.now(UTC), "label": "0"}])
    log.close()
    assert read_log(labels)[["request_id", "id"]].values.tolist() == [[None, "loan-7"]]
