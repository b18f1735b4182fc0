"""The prediction and feedback log: Parquet files rolled per time window, written off the
request path, into a folder or an S3 prefix.

Requests only append to a bounded in-memory queue; a background thread writes one row
group per flush into the open file of the current window and publishes it (a move from a
hidden in-progress name) when the window ends, so a reader never sees a partial file.
When the queue is full a record is dropped and counted, never waited for.
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

_ARROW_TYPES = {"int": pa.int64(), "float": pa.float64(), "str": pa.string(), "bool": pa.bool_()}


def prediction_schema(features: tuple[FeatureField, ...]) -> pa.Schema:
    """One row per instance; labels as strings so predictions and feedback always join.

    `id` is the instance's business id, `probabilities` every class's in the model's class
    order (sorted labels), `unseen` the comma-joined categorical features whose value
    training never saw; features are null where the instance left them out.
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


# A label names its prediction by the answer's `request_id` or the instance's `id`.
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
    ) -> None:
        self.folder = folder
        self.schema = schema
        self.writer_id = writer_id
        self.window_s = window_s
        self.capacity = capacity
        self.on_drop = on_drop
        self.flush_interval_s = flush_interval_s
        self._queue: deque[dict[str, Any]] = deque()
        self._stop = threading.Event()
        self._writer: pq.ParquetWriter | None = None
        self._window: int | None = None
        self._upload: Upload | None = None
        self._thread = threading.Thread(target=self._run, name=f"log-{folder.url}", daemon=True)
        self._thread.start()

    def append(self, records: list[dict[str, Any]]) -> None:
        """Queue records; drop (and count) what does not fit rather than block a request."""
        room = self.capacity - len(self._queue)
        if room < len(records):
            self.on_drop(len(records) - max(room, 0))
            records = records[: max(room, 0)]
        self._queue.extend(records)

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
        records = [self._queue.popleft() for _ in range(len(self._queue))]
        if not records:
            return
        try:
            table = pa.Table.from_pylist(records, schema=self.schema)
            if self._writer is None:
                self._open(window)
            assert self._writer is not None
            self._writer.write_table(table)
        except Exception:  # the writer thread must outlive any bad record or store error
            logger.exception("prediction log: dropping %d records", len(records))
            self.on_drop(len(records))

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
