"""The prediction and feedback log: Parquet files written off the request path, into a
folder or an S3 prefix, that survive a crash of their writer.

Requests only append to a bounded in-memory queue; a background thread publishes what is
queued every `DRIFTLOOP_PREDICTION_LOG_FLUSH_S` seconds as a segment (a small Parquet file,
valid on its own, moved into place from a hidden in-progress name), and folds a window's
segments into one file per writer when the window ends (`driftloop.logwindows`), so a
reader never sees a partial file and a killed writer loses only its last interval.
The queue is bounded in records (`DRIFTLOOP_PREDICTION_LOG_CAPACITY`) and in approximate
bytes (`max_bytes`, 64 MiB: strings by length, anything else 8 bytes); a record that does
not fit is dropped and counted, never waited for. A record pyarrow cannot write is found
by writing the batch's records one by one, and only it is dropped (and counted); a
segment the store refuses is tried once more at the next flush, then dropped and counted.
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
from pyarrow import fs as pafs

from driftloop.logwindows import folded_into, segment_file, window_file, window_start
from driftloop.storage import Folder
from serving.schemas import FeatureField

logger = logging.getLogger(__name__)

PREDICTIONS = "predictions"
FEEDBACK = "feedback"

# Approximate bytes the queue may hold: ~100,000 typical prediction records (~400 bytes).
MAX_QUEUE_BYTES = 64 * 2**20

# A hidden in-progress file nobody touched for this long has no live writer: a live one
# publishes a segment within milliseconds of opening it, and a window file within seconds.
STALE_S = 60.0
# Rows per row group when segments are folded (one per segment would be hundreds of tiny
# row groups per window under load).
FOLD_ROWS = 65_536
HIDDEN_SUFFIX = ".inprogress"

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
    """Append-only, bounded, written by one daemon thread per log.

    Every `flush_interval_s` the queued records are published as one segment, a Parquet
    file valid on its own: a SIGKILL loses the records of the last interval (and what the
    queue held), not the window. When the window ends, its segments are folded into one
    window file, so a day holds one file per writer per window, not one per flush.
    At start the thread first tidies up after writers that died: a hidden in-progress
    file no writer touched for `STALE_S` is published if it reads whole and removed if
    not, and a dead writer's segments of an ended window are folded.
    """

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
        if not writer_id or any(c in writer_id for c in "./"):
            raise ValueError(f"a log writer id is a plain name without '.' or '/': {writer_id!r}")
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
        self._window: int | None = None  # the window of the segments in `_segments`
        self._segments: list[str] = []
        self._sequence = 0
        self._retry: pa.Table | None = None  # records whose segment failed once
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
        """Publish what is queued and fold the open window (replica shutdown)."""
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        try:
            self._recover(time.time())
        except Exception:  # tidying up after others must never stop this writer
            logger.exception("prediction log: could not recover %s", self.folder)
        while not self._stop.wait(self.flush_interval_s):
            self._tick()
        self._tick()
        if self._retry is not None:  # no later flush will: its second try, or its count
            self._tick()
        self._fold()

    def _tick(self) -> None:
        try:
            self._flush(time.time())
        except Exception:  # the writer thread must outlive anything one flush meets
            logger.exception("prediction log: a flush of %s failed", self.folder)

    def _flush(self, now: float) -> None:
        """Publish the queued records (and any that failed once) as one segment."""
        window = int(now // self.window_s) * self.window_s
        if self._window is not None and window != self._window:
            self._fold()
        records: list[dict[str, Any]] = []
        with self._lock:
            while self._queue:
                batch, size = self._queue.popleft()
                records.extend(batch)
                self._queued -= len(batch)
                self._queued_bytes -= size
        retry, self._retry = self._retry, None
        tables = [t for t in (retry, self._table(records) if records else None) if t is not None]
        table = pa.concat_tables(tables) if len(tables) > 1 else (tables or [None])[0]
        if table is None or not table.num_rows:
            return
        if self._window is None:
            self._window = window
        name = segment_file(self._window, self.writer_id, self._sequence)
        try:
            self._write(name, table)
        except Exception:  # a store error: each segment has its own writer, none is reused
            retried = retry.num_rows if retry is not None else 0
            logger.exception(
                "prediction log: could not publish %s (%d records; %d of them dropped after "
                "a second try)",
                name,
                table.num_rows,
                retried,
            )
            if retried:
                self.on_drop(retried)
            fresh = table.slice(retried)
            self._retry = fresh if fresh.num_rows else None
            return
        self._sequence += 1
        self._segments.append(name)

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

    def _write(self, name: str, table: pa.Table) -> None:
        """`table` as the file `name`, visible only once whole."""
        upload = self.folder.upload(name)
        try:
            writer = pq.ParquetWriter(upload.stream, table.schema)
            writer.write_table(table)
            writer.close()
            upload.commit()
        except BaseException:
            upload.abort()
            raise

    def _fold(self) -> None:
        """This writer's segments of the ended window into its window file."""
        window, names = self._window, self._segments
        self._window, self._segments = None, []
        if window is None or not names:
            return
        try:
            self._fold_segments(window_file(window, self.writer_id), names)
        except Exception:  # the segments stay published: readable, only more files
            logger.exception("prediction log: could not fold %d segments", len(names))

    def _fold_segments(self, target: str, names: list[str]) -> None:
        """Publish the rows of `names` as `target`, then remove them; a reader that lists
        both in between reads `target` only (`logwindows.superseded`)."""
        if len(names) == 1:
            self.folder.move_to(names[0], self.folder, target)
            return
        upload = self.folder.upload(target)
        try:
            writer: pq.ParquetWriter | None = None
            pending: list[pa.Table] = []
            rows = 0
            for name in names:
                table = pq.read_table(pa.BufferReader(self.folder.read_bytes(name)))
                if writer is None:  # the files' own schema: a dead writer's may differ
                    writer = pq.ParquetWriter(upload.stream, table.schema)
                pending.append(table)
                rows += table.num_rows
                if rows >= FOLD_ROWS:
                    writer.write_table(pa.concat_tables(pending))
                    pending, rows = [], 0
            assert writer is not None
            if pending:
                writer.write_table(pa.concat_tables(pending))
            writer.close()
            upload.commit()
        except BaseException:
            upload.abort()
            raise
        for name in names:
            self.folder.delete(name)

    def _recover(self, now: float) -> None:
        """After writers that died: publish or remove their hidden files, fold their
        segments of ended windows, remove segments already folded."""
        entries = self.folder.fs.get_file_info(
            pafs.FileSelector(self.folder.root, allow_not_found=True)
        )
        stale = [
            e
            for e in entries
            if e.type == pafs.FileType.File and now - (e.mtime_ns or 0) / 1e9 > STALE_S
        ]
        published = {e.base_name for e in entries if not e.base_name.startswith(".")}
        recovered = removed = 0
        for entry in stale:
            if entry.base_name.startswith(".") and entry.base_name.endswith(HIDDEN_SUFFIX):
                final = _published_name(entry.base_name)
                if (
                    final is not None
                    and final not in published
                    and _readable(self.folder.fs, entry.path)
                ):
                    self.folder.fs.move(entry.path, f"{self.folder.root}/{final}")
                    published.add(final)
                    recovered += 1
                else:
                    self.folder.fs.delete_file(entry.path)
                    removed += 1
        groups: dict[str, list[str]] = {}
        for name in published:
            target = folded_into(name)
            if target is not None:
                groups.setdefault(target, []).append(name)
        folded = 0
        for target, names in sorted(groups.items()):
            start = window_start(target)
            if start is None or start + self.window_s + STALE_S > now:
                continue  # its window may still be open: a live writer's
            if target in published:  # folded before its writer could remove them
                for name in names:
                    self.folder.delete(name)
                continue
            try:
                self._fold_segments(target, sorted(names))
                folded += len(names)
            except Exception:  # another replica folding them too, or a bad file
                logger.exception("prediction log: could not fold the segments of %s", target)
        if recovered or removed or folded:
            logger.warning(
                "prediction log %s: published %d in-progress files of stopped writers, "
                "removed %d unreadable ones, folded %d of their segments",
                self.folder,
                recovered,
                removed,
                folded,
            )


def _published_name(hidden: str) -> str | None:
    """The name a hidden in-progress file (`Folder.upload`) was to be published under."""
    inner = hidden.removeprefix(".").removesuffix(HIDDEN_SUFFIX)
    final, dot, _ = inner.rpartition(".")
    named = dot and final.endswith(".parquet") and window_start(final) is not None
    return final if named else None


def _readable(fs: pafs.FileSystem, path: str) -> bool:
    """Whether a file is a whole Parquet file: its writer closed it before dying."""
    try:
        with fs.open_input_stream(path) as stream:
            pq.read_table(pa.BufferReader(stream.read()))
    except Exception:  # truncated, no footer, garbage: nothing to recover
        return False
    return True


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
