"""A cursor into a serving log: read only the records published since the last read.

A writer publishes numbered segments of its window, then folds them, in order, into one
window file (`driftloop.logwindows`); so a window's records are always a prefix that
grows: its segments in sequence order, then the window file holding the same rows. The
cursor keeps, per window (the window file's name), how many rows were read and the next
segment number: the window file is read from that row on, a segment only if it is next.
No record is read twice and none is skipped; a file that does not read is skipped,
counted, and quarantined like the batch monitors' reads do.

A listing is not a snapshot (a local directory is read while files are renamed into
it), so a listing that misses a file proves nothing: a window is forgotten only when it
is older than the reader's horizon, and a missing segment number is waited for
(`GAP_WAIT_S`) before the segments after it are read: a live writer publishes segment
k + 1 only after k, and a gap that lasts is a segment another reader quarantined.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from driftloop.logwindows import SUFFIX, SkippedFile, folded_into, quarantine, window_start
from driftloop.storage import Folder

logger = logging.getLogger(__name__)

# How long a missing segment number holds back the segments after it: longer than a
# listing race (milliseconds) and than a dead writer's in-progress segment takes to be
# published by the next writer's recovery (`serving.prediction_log.STALE_S`, 60 s).
GAP_WAIT_S = 180.0


@dataclass
class Position:
    """How far one window (or a file of a name not made by a writer) has been read."""

    rows: int = 0
    segment: int = 0  # the next segment number to read
    done: bool = False  # its window file (final once published) has been read
    gap_since: float | None = None  # when a later segment than the next was first seen

    def to_json(self) -> list[Any]:
        return [self.rows, self.segment, int(self.done), self.gap_since]

    @classmethod
    def from_json(cls, value: list[Any]) -> Position:
        return cls(int(value[0]), int(value[1]), bool(value[2]), value[3])


@dataclass
class LogCursor:
    positions: dict[str, Position] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {name: p.to_json() for name, p in self.positions.items()}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> LogCursor:
        return cls({name: Position.from_json(p) for name, p in value.items()})


@dataclass(frozen=True)
class NewRecords:
    frame: pd.DataFrame
    skipped: tuple[SkippedFile, ...]
    pending: bool  # a file vanished under the read (folded): read again at the next step


def _group(name: str) -> tuple[str, int | None]:
    """The window a file belongs to and its segment number (None: the window file, or a
    file of another name, which is read whole once)."""
    target = folded_into(name)
    if target is None:
        return name, None
    return target, int(name.removesuffix(SUFFIX).rpartition(".")[2])


def has_new(log: Folder, cursor: LogCursor, oldest: float | None = None) -> bool:
    """Whether `read_new` would find a file to read (a listing, no reads)."""
    return bool(_unread(log, cursor, oldest)[0])


def _unread(
    log: Folder, cursor: LogCursor, oldest: float | None
) -> tuple[dict[str, list[tuple[int | None, str]]], set[str]]:
    """The listed files not yet read, per window, in read order; and every listed window.

    Windows that started before `oldest` (epoch seconds) are left out: records too old
    to matter, and a cursor that stays as small as the recent log.
    """
    groups: dict[str, list[tuple[int | None, str]]] = {}
    for entry in log.files((SUFFIX,)):
        group, segment = _group(entry.name)
        start = window_start(group)
        if oldest is not None and start is not None and start < oldest:
            continue
        groups.setdefault(group, []).append((segment, entry.name))
    unread = {}
    for group, files in sorted(groups.items()):
        position = cursor.positions.get(group, Position())
        if position.done:
            continue
        whole = [f for f in files if f[0] is None]
        if whole:  # the window file: its segments, listed too, are the same rows
            unread[group] = whole
            continue
        fresh = sorted((f for f in files if f[0] >= position.segment), key=lambda f: f[0])
        if fresh:
            unread[group] = fresh
    return unread, set(groups)


def read_new(
    log: Folder, cursor: LogCursor, oldest: float | None = None, now: float | None = None
) -> NewRecords:
    """The records published since `cursor` (which it advances), in window and segment
    order; windows that started before `oldest` are neither read nor remembered."""
    now = time.time() if now is None else now
    unread, listed = _unread(log, cursor, oldest)
    frames: list[pd.DataFrame] = []
    skipped: list[SkippedFile] = []
    pending = False
    for group, files in unread.items():
        position = cursor.positions.setdefault(group, Position())
        for segment, name in files:
            if segment is not None and segment != position.segment:
                if position.gap_since is None:
                    position.gap_since = now
                if now - position.gap_since < GAP_WAIT_S:
                    pending = True
                    break
                reason = f"segments {position.segment}-{segment - 1} never appeared"
                skipped.append(_logged(SkippedFile(f"{group} {reason}", reason, False)))
            position.gap_since = None
            try:
                data = log.read_bytes(name)
            except FileNotFoundError:  # folded or moved since the listing
                pending = True
                break
            except OSError as error:  # the store failed: try this file again next time
                skipped.append(_logged(SkippedFile(name, f"could not fetch it: {error}", False)))
                pending = True
                break
            try:
                frame = pd.read_parquet(io.BytesIO(data))
            except Exception as error:  # the whole file arrived and is not Parquet
                skipped.append(
                    _logged(quarantine(log, name, f"not a readable Parquet file: {error}"))
                )
                frame = None
            if segment is None:
                if frame is not None:
                    frames.append(frame.iloc[position.rows :])
                    position.rows = max(position.rows, len(frame))
                position.done = True
            else:
                if frame is not None:
                    frames.append(frame)
                    position.rows += len(frame)
                position.segment = segment + 1
    for group in list(cursor.positions):
        start = window_start(group)
        old = oldest is not None and start is not None and start < oldest
        if old or (start is None and group not in listed):  # a foreign file is read whole
            del cursor.positions[group]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return NewRecords(frame, tuple(skipped), pending)


def _logged(skipped: SkippedFile) -> SkippedFile:
    logger.warning("serving log cursor: skipped %s: %s", skipped.name, skipped.reason)
    return skipped
