"""The serving log's file names: one Parquet file per writer per time window.

Serving writes them and Dagster reads them; the name carries the window's start, so a
reader can skip whole files outside the time it judges instead of reading the history.
"""

from __future__ import annotations

from datetime import UTC, datetime

STAMP = "%Y%m%dT%H%M%SZ"


def window_file(window_start: int, writer_id: str) -> str:
    return f"{datetime.fromtimestamp(window_start, UTC).strftime(STAMP)}-{writer_id}.parquet"


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
