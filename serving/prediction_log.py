"""The prediction and feedback log: Parquet files rolled per time window, written off the
request path, into a folder or an S3 prefix.

Requests only append to a bounded in-memory queue; a background thread writes one row
group per flush into the open file of the current window and publishes it (a move from a
hidden in-progress name) when the window ends, so a reader never sees a partial file.
The queue is bounded in records (`DRIFTLOOP_PREDICTION_LOG_CAPACITY`) and in approximate
bytes (`max_bytes`, 64 MiB: strings by length, anything else 8 bytes); a record that does
not fit is dropped and counted, never waited for. A record pyarrow cannot write is found
by writing the batch's records one by one, and only it is dropped (and counted).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from driftloop.logwindows import window_file
from driftloop.storage import Folder, Upload
from serving.schemas import FeatureField

logger = logging.getLogger(__name__)

PREDICTIONS = "predictions"
FEEDBACK = "feedback"

# Approximate bytes the queue may hold: ~100,000 typical prediction records (~400 bytes).
MAX_QUEUE_BYTES = 64 * 2**20

_ARROW_TYPES = {"int": pa.int64(), "float": pa.float64(), "str": pa.string(), "bool": pa.bool_()}


def prediction_schema(features: tuple[FeatureField, ...]) -> pa.Schema:
    """One row per instance; labels as strings so predictions and feedback always join.

    `id` is the instance's business id, `probabilities` every class's in the model's class
    order (sorted labels), `unseen` the comma-joined categorical features whose value
    training never saw; features are null where the instance left them out. A regressor's
    `prediction` is `repr(float)`, which `float()` reads back bit for bit, and its
    `probability` and `probabilities` are null.
    """
    return pa.schema(
        [
            ("request_id", pa.string()),
            ("index", pa.int32()),
            ("at", pa.timestamp("us", tz="UTC")),
            ("model_version", pa.string()),
            ("route", pa.string()),
            ("key", pa.string()),
            ("id", pa.string()),
            ("prediction", pa.string()),
            ("probability", pa.float64()),
            ("probabilities", pa.list_(pa.float64())),
            ("unseen", pa.string()),
            ("latency_ms", pa.float64()),
            *[(f.name, _ARROW_TYPES[f.type]) for f in features],
        ]
    )


# A label names its prediction by the answer's `request_id` or the instance's `id`; a
# regressor's observed value is `repr(float)`, as its predictions are.
FEEDBACK_SCHEMA = pa.schema(
    [
        ("request_id", pa.string()),
        ("id", pa.string()),
        ("at", pa.timestamp("us", tz="UTC")),
        ("label", pa.string()),
    ]
)


class ParquetLog:
    """Append-only, bounded, written by one daemon thread per log."""

    def __init__(
        self,
        folder: Folder,
        schema: pa.Schema,
        writer_id: str,
        window_s: int,
        capacity: int,
        on_drop: Callable[[int], None],
        flush_interval_s: float = 1.0,
        max_bytes: int = MAX_QUEUE_BYTES,
    ) -> None:
        self.folder = folder
        self.schema = schema
        self.writer_id = writer_id
        self.window_s = window_s
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.on_drop = on_drop
        self.flush_interval_s = flush_interval_s
        # One entry per `append`: its records and their approximate size.
        self._queue: deque[tuple[list[dict[str, Any]], int]] = deque()
        self._queued = 0  # records
        self._queued_bytes = 0
        self._lock = threading.Lock()  # the counters change on two threads
        self._stop = threading.Event()
        self._writer: pq.ParquetWriter | None = None
        self._window: int | None = None
        self._upload: Upload | None = None
        self._thread = threading.Thread(target=self._run, name=f"log-{folder.url}", daemon=True)
        self._thread.start()

    def append(self, records: list[dict[str, Any]]) -> None:
        """Queue records; drop (and count) what does not fit rather than block a request."""
        with self._lock:
            count = min(len(records), max(self.capacity - self._queued, 0))
            room = self.max_bytes - self._queued_bytes
            size = 0
            for i in range(count):
                record_bytes = _approximate_bytes(records[i])
                if size + record_bytes > room:
                    count = i
                    break
                size += record_bytes
            if count:
                self._queue.append((records[:count] if count < len(records) else records, size))
                self._queued += count
                self._queued_bytes += size
        if count < len(records):
            self.on_drop(len(records) - count)

    def close(self) -> None:
        """Write what is queued and publish the open file (replica shutdown)."""
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.flush_interval_s):
            self._flush(time.time())
        self._flush(time.time())
        self._publish()

    def _flush(self, now: float) -> None:
        window = int(now // self.window_s) * self.window_s
        if self._window is not None and window != self._window:
            self._publish()
        records: list[dict[str, Any]] = []
        with self._lock:
            while self._queue:
                batch, size = self._queue.popleft()
                records.extend(batch)
                self._queued -= len(batch)
                self._queued_bytes -= size
        if not records:
            return
        table = None
        try:
            table = self._table(records)
            if not table.num_rows:
                return
            if self._writer is None:
                self._open(window)
            assert self._writer is not None
            self._writer.write_table(table)
        except Exception:  # the writer thread must outlive any bad record or store error
            lost = len(records) if table is None else table.num_rows
            logger.exception("prediction log: dropping %d records", lost)
            self.on_drop(lost)

    def _table(self, records: list[dict[str, Any]]) -> pa.Table:
        """The records as one table; if pyarrow refuses them, each record alone, so that a
        record it cannot write is dropped (and counted) without its neighbours."""
        try:
            return pa.Table.from_pylist(records, schema=self.schema)
        except (pa.ArrowException, OverflowError, TypeError, ValueError):
            pass
        kept = []
        for record in records:
            try:
                kept.append(pa.Table.from_pylist([record], schema=self.schema))
            except (pa.ArrowException, OverflowError, TypeError, ValueError) as error:
                logger.error("prediction log: dropping a record pyarrow refuses: %s", error)
                self.on_drop(1)
        return pa.concat_tables(kept).combine_chunks() if kept else self.schema.empty_table()

    def _open(self, window: int) -> None:
        self._upload = self.folder.upload(window_file(window, self.writer_id))
        self._writer = pq.ParquetWriter(self._upload.stream, self.schema)
        self._window = window

    def _publish(self) -> None:
        if self._writer is None or self._upload is None:
            return
        upload, self._upload = self._upload, None
        try:
            self._writer.close()
            upload.commit()
        except Exception:  # a store error loses this window's file, never the writer
            logger.exception("prediction log: could not publish %s", upload.final)
            upload.abort()
        finally:
            self._writer, self._window = None, None


def _approximate_bytes(record: dict[str, Any]) -> int:
    """A record's size as the queue counts it: strings by length, lists by their items,
    anything else 8 bytes (cheap enough for the request path; not Python's overhead)."""
    size = 0
    for value in record.values():
        if isinstance(value, str):
            size += len(value)
        elif isinstance(value, list):
            size += 8 * len(value)
        else:
            size += 8
    return size
