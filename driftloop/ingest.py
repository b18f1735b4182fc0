"""Ingesting one landed file: accept it whole into the batch store or quarantine it whole."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import pandas as pd

from driftloop.data import (
    SUPPORTED_SUFFIXES,
    BatchStore,
    DataFileError,
    bytes_sha256,
    file_name_of,
    partition_key,
    quarantine,
    read_table,
)
from driftloop.schema import (
    CHECK_NAMES,
    CheckOutcome,
    conform,
    infer_schema,
    load_schema,
    save_schema_once,
    validate_batch,
)
from driftloop.settings import Settings
from driftloop.storage import Folder


@dataclass(frozen=True)
class IngestOutcome:
    key: str
    accepted: bool
    rows: int
    checks: list[CheckOutcome]
    location: str
    label_counts: dict[str, int] = field(default_factory=dict)

    @property
    def reasons(self) -> list[str]:
        return [f"{c.name}: {c.detail}" for c in self.checks if not c.passed]


def pending_files(
    landing: Folder, known_keys: list[str], fingerprints: dict[str, str]
) -> tuple[list[str], dict[str, str]]:
    """New partition keys in the landing zone, and the fingerprints to remember.

    A file is only read and hashed when its size or mtime changed since the last scan; a
    file whose content is already a known partition (under any name) is skipped.
    """
    known_hashes = {key.rsplit("-", 1)[-1] for key in known_keys}
    new_keys: list[str] = []
    remembered: dict[str, str] = {}
    for landed in landing.files(SUPPORTED_SUFFIXES):
        fingerprint = f"{landed.size}:{landed.mtime_ns}"
        remembered[landed.name] = fingerprint
        if fingerprints.get(landed.name) == fingerprint:
            continue
        try:
            data = landing.read_bytes(landed.name)
        except FileNotFoundError:  # quarantined or removed since the listing
            continue
        key = partition_key(landed.name, bytes_sha256(data))
        content = key.rsplit("-", 1)[-1]
        if content not in known_hashes:
            known_hashes.add(content)
            new_keys.append(key)
    return new_keys, remembered


def ingest(settings: Settings, key: str) -> IngestOutcome:
    """Validate the landed file behind `key`; store it whole or quarantine it with reasons."""
    store = BatchStore(settings.batches)
    landing = settings.landing
    name = file_name_of(key)
    landed = landing.info(name)
    if landed is None:
        if store.path(key).exists():  # re-materialising an accepted partition
            return _accepted_again(settings, store, key)
        raise DataFileError(f"{name} is no longer in the landing zone {landing}")
    data = landing.read_bytes(name)
    if not bytes_sha256(data).startswith(key.rsplit("-", 1)[-1]):
        raise DataFileError(
            f"{name} changed after it landed; its new content is a partition of its own"
        )
    try:
        frame = read_table(name, data)
    except DataFileError as error:
        return _reject(settings, key, name, _unreadable(str(error)), rows=0)
    schema = load_schema(settings.schema_path)
    if schema is None:
        try:
            schema = infer_schema(frame, settings.target_column)
        except ValueError as error:
            return _reject(settings, key, name, _unreadable(str(error)), rows=len(frame))
    checks = validate_batch(frame, schema, settings.min_rows)
    if not all(c.passed for c in checks):
        return _reject(settings, key, name, checks, rows=len(frame))
    in_force = save_schema_once(schema, settings.schema_path)
    if in_force != schema:  # another batch set the schema first: judge against that one
        checks = validate_batch(frame, in_force, settings.min_rows)
        if not all(c.passed for c in checks):
            return _reject(settings, key, name, checks, rows=len(frame))
    stored = store.write(key, conform(frame, in_force))
    # A batch is dated by when its file landed, not when a (possibly queued) run ingested
    # it: training windows after a detected change select by this time.
    os.utime(stored, ns=(landed.mtime_ns, landed.mtime_ns))
    labels = frame[in_force.target].value_counts().sort_index()
    return IngestOutcome(
        key, True, len(frame), checks, str(stored), {str(k): int(v) for k, v in labels.items()}
    )


def _accepted_again(settings: Settings, store: BatchStore, key: str) -> IngestOutcome:
    schema = load_schema(settings.schema_path)
    frame = pd.read_parquet(store.path(key))
    assert schema is not None, "an accepted batch implies a saved schema"
    checks = validate_batch(frame, schema, settings.min_rows)
    passed = all(c.passed for c in checks)
    return IngestOutcome(key, passed, len(frame), checks, str(store.path(key)))


def _unreadable(reason: str) -> list[CheckOutcome]:
    skipped = "not evaluated: the file could not be read as a table"
    return [CheckOutcome("schema", False, reason)] + [
        CheckOutcome(name, False, skipped) for name in CHECK_NAMES if name != "schema"
    ]


def _reject(
    settings: Settings, key: str, name: str, checks: list[CheckOutcome], rows: int
) -> IngestOutcome:
    reasons = [f"{c.name}: {c.detail}" for c in checks if not c.passed]
    moved = quarantine(settings.landing, name, settings.quarantine, reasons)
    return IngestOutcome(key, False, rows, checks, moved)
