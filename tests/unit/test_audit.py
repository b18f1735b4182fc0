"""The audit trail on both storages: order, a reader's cursor, the refusal cap."""

from __future__ import annotations

from driftloop.audit import REFUSALS_PER_MINUTE, AuditTrail
from driftloop.storage import Folder


def test_entries_read_back_in_order_and_after_a_cursor(folder: Folder) -> None:
    trail = AuditTrail(folder)
    for number in range(5):
        trail.append({"action": "POST /admin/reload", "outcome": "200", "number": number})
    entries = trail.read()
    assert [e.fields["number"] for e in entries] == [0, 1, 2, 3, 4]
    assert all(e.fields["at"] for e in entries)
    assert [e.fields["number"] for e in trail.read(limit=2)] == [3, 4]  # the newest two
    after = trail.read(after=entries[1].name, limit=2)  # a reader catching up, in order
    assert [e.fields["number"] for e in after] == [2, 3]
    assert trail.read(after=entries[-1].name) == []
    # Another process's trail on the same folder reads the same entries.
    assert [e.fields for e in AuditTrail(folder).read()] == [e.fields for e in entries]


def test_a_flood_of_refusals_is_capped_and_counted(folder: Folder) -> None:
    trail = AuditTrail(folder)
    for _ in range(REFUSALS_PER_MINUTE + 5):
        trail.append({"action": "POST /admin/rollback", "outcome": "403"}, refusal=True)
    trail.append({"action": "POST /admin/rollback", "outcome": "200"})
    entries = trail.read()
    assert len(entries) == REFUSALS_PER_MINUTE + 1
    assert entries[-1].fields["suppressed_before"] == 5
    assert not any("suppressed_before" in e.fields for e in entries[:-1])


def test_a_foreign_file_is_skipped(folder: Folder) -> None:
    trail = AuditTrail(folder)
    trail.append({"action": "GET /admin/state", "outcome": "200"})
    folder.write_bytes("00000000T000000.000000Z-planted.json", b"not json")
    assert [e.fields["action"] for e in trail.read()] == ["GET /admin/state"]
