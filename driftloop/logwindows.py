"""The serving log's files: one Parquet file per writer per time window, the segments a
writer publishes within its window until it folds them into that file, and reading them.

Serving writes them and Dagster reads them; the name carries the window's start, so a
reader can skip whole files outside the time it judges instead of reading the history.
A writer publishes a segment every few seconds (so a crash loses only the last seconds)
and, when the window ends, one window file with the same rows; a reader that sees both
reads the window file only (`superseded`). A file that does not read is quarantined and
skipped, so one bad file never fails the monitors or the canary reading its window.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import pandas as pd

from driftloop.storage import Folder

logger = logging.getLogger(__name__)

STAMP = "%Y%m%dT%H%M%SZ"
SUFFIX = ".parquet"


def window_file(window_start: int, writer_id: str) -> str:
    return f"{datetime.fromtimestamp(window_start, UTC).strftime(STAMP)}-{writer_id}{SUFFIX}"


def segment_file(window_start: int, writer_id: str, sequence: int) -> str:
    """The `sequence`-th segment of a window; `window_file` once folded."""
    return window_file(window_start, writer_id).removesuffix(SUFFIX) + f".{sequence:06d}{SUFFIX}"


def folded_into(name: str) -> str | None:
    """The window file a segment is folded into, or None for a name that is no segment."""
    base, dot, sequence = name.removesuffix(SUFFIX).rpartition(".")
    if not dot or not sequence.isdigit() or not name.endswith(SUFFIX):
        return None
    return base + SUFFIX


def superseded(names: list[str]) -> set[str]:
    """Segments whose window file is among `names`: the same rows, already folded."""
    present = set(names)
    return {name for name in names if folded_into(name) in present}


def window_start(name: str) -> float | None:
    """The start of the window a log file holds, or None for a name not made here."""
    try:
        return (
            datetime.strptime(name[: len("20260101T000000Z")], STAMP)
            .replace(tzinfo=UTC)
            .timestamp()
        )
    except ValueError:
        return None


# Where a published file that does not read as Parquet is moved, with a `.reason.json`.
QUARANTINE = "quarantine"
# Listings a read may take when files are folded or moved under it (a writer folding its
# window, another reader quarantining a file) before it reads what is left.
READ_ATTEMPTS = 3


@dataclass(frozen=True)
class SkippedFile:
    """A listed log file a read left out, and why; `quarantined` if it was moved aside."""

    name: str
    reason: str
    quarantined: bool


def read_published(
    log: Folder, wanted: Callable[[str], bool] = lambda name: True
) -> tuple[list[pd.DataFrame], list[SkippedFile]]:
    """Every published file of `log` that `wanted` keeps, superseded segments left out.

    A file that cannot be fetched (the store failed) is skipped this time; one whose bytes
    arrive but do not read as Parquet is corrupt: moved to `quarantine/` with its reason.
    Either way it is logged and returned as skipped, and the read goes on without it.
    """
    attempts = 0
    while True:
        attempts += 1
        last = attempts == READ_ATTEMPTS
        listed = [f.name for f in log.files((SUFFIX,))]
        folded = superseded(listed)
        frames: list[pd.DataFrame] = []
        skipped: list[SkippedFile] = []
        vanished = False
        for name in (n for n in listed if n not in folded and wanted(n)):
            try:
                data = log.read_bytes(name)
            except FileNotFoundError:  # folded or moved since the listing
                vanished = True
                if last:
                    continue
                break
            except OSError as error:
                skipped.append(_skip(SkippedFile(name, f"could not fetch it: {error}", False)))
                continue
            try:
                frames.append(pd.read_parquet(io.BytesIO(data)))
            except Exception as error:  # the whole file arrived and is not Parquet
                skipped.append(
                    _skip(quarantine(log, name, f"not a readable Parquet file: {error}"))
                )
        if not vanished or last:
            return frames, skipped


def quarantine(log: Folder, name: str, reason: str) -> SkippedFile:
    """Move a corrupt log file aside, with a `.reason.json` beside it."""
    target = log.child(QUARANTINE)
    try:
        log.move_to(name, target, name)
        note = {"file": name, "reason": reason, "at": datetime.now(UTC).isoformat()}
        target.write_bytes(f"{name}.reason.json", json.dumps(note).encode())
    except FileNotFoundError:  # another reader moved it first
        return SkippedFile(name, reason, True)
    except OSError as error:
        logger.error("serving log: could not quarantine %s: %s", name, error)
        return SkippedFile(name, reason, False)
    return SkippedFile(name, reason, True)


def _skip(skipped: SkippedFile) -> SkippedFile:
    where = f"moved to {QUARANTINE}/" if skipped.quarantined else "left in place"
    logger.warning("serving log: skipped %s (%s): %s", skipped.name, where, skipped.reason)
    return skipped
