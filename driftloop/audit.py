"""The audit trail of the serving admin plane: written by every replica, read by `status`
and by the Dagster sensor that shows it in the UI.

Each entry is one small JSON file in the serving log store (`<log>/audit/`, a directory or
an S3 prefix), named by its UTC time and a random suffix. One object per entry is the only
append an S3 prefix has; it lets replicas on other machines write without coordinating,
and lets a reader resume after the last name it saw. Admin actions are rare; refused
attempts can come in floods, so a replica writes at most `REFUSALS_PER_MINUTE` of them a
minute and counts the rest in the next one it writes (`suppressed_before`).
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from driftloop.storage import Folder

logger = logging.getLogger(__name__)

SUFFIX = ".json"
REFUSALS_PER_MINUTE = 60
MAX_ENTRY_BYTES = 64 * 2**10  # an entry is a few hundred bytes; anything larger is not ours


@dataclass(frozen=True)
class AuditEntry:
    name: str  # orders entries by time; a reader's cursor
    fields: dict[str, Any]


class AuditTrail:
    """Appends and reads audit entries in one folder."""

    def __init__(self, folder: Folder) -> None:
        self.folder = folder
        self._lock = threading.Lock()
        self._window_start = time.monotonic()
        self._refusals_in_window = 0
        self._suppressed = 0

    def append(self, fields: dict[str, Any], *, refusal: bool = False) -> None:
        """Write one entry (`refusal`: a refused attempt, rate-limited); a storage failure
        is logged, never raised into the request."""
        if refusal and not self._admit_refusal():
            return
        now = datetime.now(UTC)
        entry = {"at": now.isoformat(), **fields}
        with self._lock:
            if self._suppressed:
                entry["suppressed_before"], self._suppressed = self._suppressed, 0
        name = f"{now:%Y%m%dT%H%M%S.%f}Z-{secrets.token_hex(4)}{SUFFIX}"
        try:
            self.folder.write_bytes(name, json.dumps(entry, default=str).encode())
        except OSError:
            logger.exception("could not write an audit entry to %s", self.folder)

    def read(self, after: str | None = None, limit: int | None = None) -> list[AuditEntry]:
        """Entries named after `after`, oldest first; the newest `limit` when `after` is
        None (what `status` shows), the oldest `limit` after it otherwise (a reader catching
        up in order). An unreadable or foreign file is skipped with a warning."""
        names = [f.name for f in self.folder.files((SUFFIX,)) if after is None or f.name > after]
        if limit is not None:
            names = names[-limit:] if after is None else names[:limit]
        entries = []
        for name in names:
            try:
                fields = json.loads(self.folder.read_bytes(name, MAX_ENTRY_BYTES))
            except (OSError, ValueError) as error:
                logger.warning("skipped audit entry %s: %s", name, error)
                continue
            if isinstance(fields, dict):
                entries.append(AuditEntry(name, fields))
        return entries

    def _admit_refusal(self) -> bool:
        with self._lock:
            if time.monotonic() - self._window_start >= 60:
                self._window_start, self._refusals_in_window = time.monotonic(), 0
            if self._refusals_in_window >= REFUSALS_PER_MINUTE:
                self._suppressed += 1
                return False
            self._refusals_in_window += 1
            return True
