"""Ingesting one landed file: accept it whole into the batch store or quarantine it whole."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from driftloop.data import (
    SUPPORTED_SUFFIXES,
    BatchStore,
    DataFileError,
    PartitionKey,
    bytes_sha256,
    parse_partition_key,
    partition_key,
    quarantine,
    read_table,
    slug,
)
from driftloop.schema import (
    CHECK_NAMES,
    CheckOutcome,
    ColumnRules,
    NullPolicy,
    blank_to_null,
    conform,
    infer_schema,
    load_schema,
    save_schema_once,
    target_summary,
    validate_batch,
)
from driftloop.settings import Settings
from driftloop.storage import Folder, RefusedFile, StoredFile

# A file that failed to read (not one refused for what it is) is tried on this many scans,
# for transient errors, then left alone until it changes.
READ_ATTEMPTS = 3


@dataclass(frozen=True)
class IngestOutcome:
    key: str
    accepted: bool
    rows: int
    checks: list[CheckOutcome]
    location: str
    label_counts: dict[str, float] = field(default_factory=dict)  # `target_summary`
    file: str = ""  # the landed file's own name (the key holds only a slug of it)

    @property
    def reasons(self) -> list[str]:
        return [f"{c.name}: {c.detail}" for c in self.checks if not c.passed]


def pending_files(
    landing: Folder,
    known_keys: list[str],
    fingerprints: dict[str, str],
    max_file_bytes: int = Settings.model_fields["max_file_bytes"].default,
    budget_s: float | None = None,
    on_skip: Callable[[str, str], None] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """New partition keys in the landing zone, and the fingerprints to remember.

    A file is only hashed (streamed) when its size or mtime changed since the last scan; a
    file whose content is already a known partition (under any name) is skipped. Each file
    is judged on its own: a symlink, a special file, an oversized file or a read error is
    passed to `on_skip` with the reason and remembered, so it neither stops the others nor
    comes back every scan (a read error is retried `READ_ATTEMPTS` times). Past `budget_s`
    seconds the remaining changed files are left for the next scan (at least one is done).
    """
    known_hashes = {key.rsplit("-", 1)[-1] for key in known_keys}
    deadline = None if budget_s is None else time.monotonic() + budget_s
    new_keys: list[str] = []
    remembered: dict[str, str] = {}
    read_any = False
    for landed in landing.entries(SUPPORTED_SUFFIXES):
        fingerprint = _fingerprint(landed)
        seen = fingerprints.get(landed.name, "")
        attempts = _attempts(seen, fingerprint)
        if seen == fingerprint or attempts >= READ_ATTEMPTS:
            remembered[landed.name] = seen
            continue
        if deadline is not None and read_any and time.monotonic() > deadline:
            if seen:  # still differs from the file: looked at on the next scan
                remembered[landed.name] = seen
            continue
        remembered[landed.name] = fingerprint
        refused = landed_refusal(landed, max_file_bytes)
        if refused:
            _skip(on_skip, landed.name, refused)
            continue
        read_any = True
        try:
            digest = landing.sha256(landed.name, max_file_bytes)
        except FileNotFoundError:  # quarantined or removed since the listing
            del remembered[landed.name]
            continue
        except OSError as error:
            remembered[landed.name] = f"{fingerprint}!{attempts + 1}"
            retry = "" if attempts + 1 >= READ_ATTEMPTS else " (tried again next scan)"
            _skip(on_skip, landed.name, f"{read_error(error)}{retry}")
            continue
        key = partition_key(landed.name, digest)
        content = key.rsplit("-", 1)[-1]
        if content not in known_hashes:
            known_hashes.add(content)
            new_keys.append(key)
    return new_keys, remembered


def landed_refusal(landed: StoredFile, max_file_bytes: int) -> str | None:
    """Why a listed entry is not read at all, or None. Symlinks are never followed: one
    could point anywhere the ingest process can read (the MLflow store, credentials)."""
    try:
        landed.name.encode()
    except UnicodeEncodeError:
        return "its name is not valid UTF-8: rename it"
    if landed.kind == "symlink":
        return "a symbolic link: links are not followed; copy the file itself"
    if landed.kind != "file":
        return f"not a regular file but a {landed.kind}"
    if landed.size > max_file_bytes:
        return (
            f"{landed.size:,} bytes, over the cap of {max_file_bytes:,} bytes "
            "(DRIFTLOOP_MAX_FILE_BYTES)"
        )
    return None


def read_error(error: OSError) -> str:
    if isinstance(error, RefusedFile):
        return error.strerror or str(error)
    return f"could not be read: {error.strerror or error}"


def _fingerprint(landed: StoredFile) -> str:
    plain = f"{landed.size}:{landed.mtime_ns}"
    return plain if landed.kind == "file" else f"{landed.kind}:{plain}"


def _attempts(seen: str, fingerprint: str) -> int:
    """Failed reads recorded for this very version of the file (`<fingerprint>!<count>`)."""
    base, _, count = seen.partition("!")
    return int(count) if base == fingerprint and count.isdigit() else 0


def _skip(on_skip: Callable[[str, str], None] | None, name: str, reason: str) -> None:
    if on_skip is not None:
        on_skip(name, reason)


def locate(landing: Folder, key: PartitionKey, max_file_bytes: int) -> tuple[StoredFile, bytes]:
    """The landed file behind a key and its bytes: a regular file whose name has the key's
    slug and whose content has the key's hash. Other names are never derived from the key."""
    problems: list[str] = []
    for landed in landing.entries(SUPPORTED_SUFFIXES):
        if slug(landed.name) != key.slug:
            continue
        refused = landed_refusal(landed, max_file_bytes)
        if refused:
            problems.append(f"{landed.name}: {refused}")
            continue
        try:
            data = landing.read_bytes(landed.name, max_file_bytes)
        except FileNotFoundError:
            continue
        except OSError as error:
            problems.append(f"{landed.name}: {read_error(error)}")
            continue
        if bytes_sha256(data).startswith(key.sha256_prefix):
            return landed, data
        problems.append(f"{landed.name} has other content (it changed after it landed)")
    detail = f": {'; '.join(problems)}" if problems else ""
    raise DataFileError(
        f"no file in the landing zone {landing} with content {key.sha256_prefix} "
        f"named like {key.slug}{detail}"
    )


def ingest(settings: Settings, key: str) -> IngestOutcome:
    """Validate the landed file behind `key`; store it whole or quarantine it with reasons."""
    parsed = parse_partition_key(key)  # a hand-made key is refused before any file is touched
    store = BatchStore(settings.batches)
    landing = settings.landing
    try:
        landed, data = locate(landing, parsed, settings.max_file_bytes)
    except DataFileError:
        if store.path(key).exists():  # re-materialising an accepted partition
            return _accepted_again(settings, store, key)
        raise
    name = landed.name
    try:
        frame = blank_to_null(read_table(name, data, settings.max_table_bytes))
    except DataFileError as error:
        return _reject(settings, key, name, _unreadable(str(error)), rows=0)
    schema = load_schema(settings.schema_path)
    if schema is None:
        try:
            schema = infer_schema(frame, settings.target_column, column_rules(settings))
        except ValueError as error:
            return _reject(settings, key, name, _unreadable(str(error)), rows=len(frame))
    nulls = null_policy(settings)
    checks = validate_batch(frame, schema, settings.min_rows, nulls)
    if not all(c.passed for c in checks):
        return _reject(settings, key, name, checks, rows=len(frame))
    in_force = save_schema_once(schema, settings.schema_path)
    if in_force != schema:  # another batch set the schema first: judge against that one
        checks = validate_batch(frame, in_force, settings.min_rows, nulls)
        if not all(c.passed for c in checks):
            return _reject(settings, key, name, checks, rows=len(frame))
    rows = conform(frame, in_force)
    stored = store.write(key, rows)
    # A batch is dated by its newest row when the schema has a timestamp column, else by
    # when its file landed (not when a possibly queued run ingested it): training windows
    # after a detected change, and labels joined from batches, select by this time.
    dated = batch_time_ns(rows, in_force.timestamp_column) or landed.mtime_ns
    os.utime(stored, ns=(dated, dated))
    summary = target_summary(frame, in_force)
    return IngestOutcome(key, True, len(frame), checks, str(stored), summary, file=name)


def batch_time_ns(rows: pd.DataFrame, timestamp_column: str | None) -> int | None:
    """The newest row's time (ns since the epoch), or None without a usable timestamp."""
    if timestamp_column is None or timestamp_column not in rows.columns:
        return None
    newest = rows[timestamp_column].max()
    return None if pd.isna(newest) else int(newest.value)


def column_rules(settings: Settings) -> ColumnRules:
    return ColumnRules(
        id_columns=settings.id_columns,
        timestamp_column=settings.timestamp_column,
        ignore_columns=settings.ignore_columns,
        id_unique_share=settings.id_unique_share,
        max_categories=settings.max_categories,
        metric=settings.metric,
        task=settings.task,
    )


def null_policy(settings: Settings) -> NullPolicy:
    return NullPolicy(cap=settings.max_null_share, tolerance=settings.null_share_tolerance)


def _accepted_again(settings: Settings, store: BatchStore, key: str) -> IngestOutcome:
    schema = load_schema(settings.schema_path)
    frame = pd.read_parquet(store.path(key))
    assert schema is not None, "an accepted batch implies a saved schema"
    checks = validate_batch(frame, schema, settings.min_rows, null_policy(settings))
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
    return IngestOutcome(key, False, rows, checks, moved, file=name)
