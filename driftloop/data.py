"""Landing zone, quarantine and the store of accepted batches.

A landed file is identified by its content hash, so dropping the same bytes twice is a
no-op. Accepted batches are written atomically (temp file, then rename): a reader sees a
whole batch or none of it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from driftloop.schema import DatasetSchema
from driftloop.storage import Folder

SUPPORTED_SUFFIXES = (".csv", ".parquet")
BATCH_COLUMN = "_batch"
HASH_DIGITS = 12
_SLUG_MAX = 120
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
# The only keys driftloop creates: a slug of the file name, then the content hash prefix.
_KEY = re.compile(rf"[A-Za-z0-9_][A-Za-z0-9._-]{{0,{_SLUG_MAX - 1}}}-[0-9a-f]{{{HASH_DIGITS}}}")
_NAME_LIMIT = 255  # bytes in one file name on common file systems and in an S3 key part


class DataFileError(Exception):
    """A landed file that cannot be read as a table; the message is the quarantine reason."""


class InvalidPartitionKey(ValueError):
    """A partition key driftloop did not create (added by hand, e.g. with `..` or `/`)."""


@dataclass(frozen=True)
class PartitionKey:
    """A parsed key: the file is found by `slug` and proven by its content hash prefix."""

    slug: str
    sha256_prefix: str


def bytes_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def slug(file_name: str) -> str:
    """A readable, path-safe form of a file name: accents dropped, anything else unsafe
    (spaces, commas, other scripts, `..`) replaced, so it never names a path by itself."""
    decomposed = unicodedata.normalize("NFKD", file_name)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    safe = re.sub(r"\.{2,}", ".", _UNSAFE.sub("_", plain))
    return re.sub(r"^[.-]", "_", safe)[:_SLUG_MAX] or "_"


def partition_key(file_name: str, sha256: str) -> str:
    """`<slug>-<hash prefix>`: readable in the UI, unique per content. The key does not have
    to map back to the name: ingest finds the landed file by slug and proves it by hash."""
    return f"{slug(file_name)}-{sha256[:HASH_DIGITS]}"


def parse_partition_key(key: str) -> PartitionKey:
    """Refuse, before any file is touched, a key that is not of the form driftloop creates."""
    if not _KEY.fullmatch(key) or ".." in key:
        shown = key if len(key) <= 200 else f"{key[:200]}…"
        raise InvalidPartitionKey(
            f"partition key {shown!r} is refused: driftloop only creates keys "
            f"<name>-<{HASH_DIGITS} hex digits> with a name of letters, digits, '.', '_' "
            "and '-' (no '..' or '/'); no file was read or moved"
        )
    name, digest = key.rsplit("-", 1)
    return PartitionKey(name, digest)


def read_table(file_name: str, data: bytes, max_table_bytes: int | None = None) -> pd.DataFrame:
    """Parse a CSV or Parquet file's bytes, turning every failure into one readable reason.

    A Parquet file is small on disk but may decompress to far more: its footer (row count,
    uncompressed size) is checked against `max_table_bytes` before any column is decoded.
    """
    suffix = Path(file_name).suffix.lower()
    try:
        buffer = io.BytesIO(data)
        if suffix == ".parquet":
            if max_table_bytes is not None:
                _check_parquet_footer(pq.ParquetFile(buffer).metadata, max_table_bytes)
                buffer.seek(0)
            frame = pd.read_parquet(buffer)
        else:
            frame = pd.read_csv(buffer)
    except DataFileError:
        raise
    except Exception as error:
        raise DataFileError(f"unreadable {suffix} file: {error}".strip()) from error
    if frame.empty:
        raise DataFileError("file has no rows")
    return frame


def _check_parquet_footer(metadata: pq.FileMetaData, max_table_bytes: int) -> None:
    """The decoded size is at least the pages' uncompressed size and at least 8 bytes per
    cell (all-null or run-length columns are tiny in pages, not in memory)."""
    uncompressed = sum(
        metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups)
    )
    cells = metadata.num_rows * metadata.num_columns
    if max(uncompressed, 8 * cells) > max_table_bytes:
        raise DataFileError(
            f"too large to read: {metadata.num_rows:,} rows x {metadata.num_columns} columns, "
            f"{uncompressed:,} bytes uncompressed, over the cap of {max_table_bytes:,} bytes "
            "(DRIFTLOOP_MAX_TABLE_BYTES)"
        )


def quarantine(landing: Folder, file_name: str, quarantine_to: Folder, reasons: list[str]) -> str:
    """Move a rejected file aside with a `<name>.reason.json` next to it; returns its new URL."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    target = f"{stamp}-{file_name}"
    if len(f"{target}.reason.json".encode(errors="surrogateescape")) > _NAME_LIMIT:
        target = f"{stamp}-{slug(file_name)}"
    landing.move_to(file_name, quarantine_to, target)
    reason = {"file": file_name, "quarantined_at": stamp, "reasons": reasons}
    quarantine_to.write_bytes(f"{target}.reason.json", json.dumps(reason, indent=2).encode())
    return f"{quarantine_to.url}/{target}"


class BatchStore:
    """Accepted batches as Parquet files; ingest order is the files' modification order."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        return self.root / f"{key}.parquet"

    def write(self, key: str, frame: pd.DataFrame) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-", suffix=".parquet")
        os.close(fd)
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, self.path(key))
        return self.path(key)

    def keys(self) -> list[str]:
        if not self.root.is_dir():
            return []
        files = [p for p in self.root.glob("*.parquet") if not p.name.startswith(".")]
        return [p.stem for p in sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name))]

    def keys_after(self, change_at: float) -> list[str]:
        """Batches whose rows all come after `change_at` (epoch seconds).

        A file holds the rows gathered since the previous file landed, so a batch counts
        only when the batch before it landed after the change; the first batch to land
        after it straddles the change and is left out.
        """
        keys = self.keys()
        landed = [self.path(key).stat().st_mtime for key in keys]
        return [
            key
            for index, key in enumerate(keys)
            if (landed[index - 1] if index else landed[index]) >= change_at
        ]

    def rows_after(self, change_at: float) -> int:
        return sum(
            pq.ParquetFile(self.path(key)).metadata.num_rows for key in self.keys_after(change_at)
        )

    def read_all(self) -> pd.DataFrame:
        """All accepted rows with the batch key in `_batch`, oldest batch first."""
        frames = [pd.read_parquet(self.path(k)).assign(**{BATCH_COLUMN: k}) for k in self.keys()]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def row_hashes(frame: pd.DataFrame) -> np.ndarray:
    return pd.util.hash_pandas_object(frame, index=False).to_numpy()


def _salted(hashes: np.ndarray, seed: int) -> np.ndarray:
    """splitmix64 of hash XOR seed: pandas' own hash key only salts text columns."""
    with np.errstate(over="ignore"):
        z = hashes ^ np.uint64((seed * 0x9E3779B97F4A7C15) % 2**64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def content_hash(frame: pd.DataFrame) -> str:
    """SHA-256 of the multiset of rows: independent of row order and of batch boundaries."""
    digest = hashlib.sha256(",".join(map(str, frame.columns)).encode())
    digest.update(np.sort(row_hashes(frame)).tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class TrainingSet:
    """A versioned dataset: the split is by row hash, so a row stays on its side forever."""

    data_hash: str
    schema: DatasetSchema
    train: pd.DataFrame
    holdout: pd.DataFrame
    recent: pd.DataFrame
    batches: tuple[str, ...]

    @property
    def version(self) -> str:
        return self.data_hash[:12]

    def xy(self, frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
        return frame[self.schema.feature_names], frame[self.schema.target]


def build_training_set(
    rows: pd.DataFrame, schema: DatasetSchema, holdout_fraction: float, seed: int
) -> TrainingSet:
    """Deduplicate, hash and split; `recent` is the holdout part of the newest batch."""
    columns = [*schema.feature_names, schema.target]
    # Two records with equal features but their own business ids are two rows, not one.
    identity = columns + [c for c in schema.id_columns if c in rows.columns]
    batches = tuple(dict.fromkeys(rows[BATCH_COLUMN]))
    unique = rows.drop_duplicates(subset=identity, keep="last").reset_index(drop=True)
    buckets = _salted(row_hashes(unique[identity]), seed) % np.uint64(10_000)
    in_holdout = buckets < holdout_fraction * 10_000
    holdout = unique[in_holdout]
    return TrainingSet(
        data_hash=content_hash(unique[identity]),
        schema=schema,
        train=unique.loc[~in_holdout, columns].reset_index(drop=True),
        holdout=holdout[columns].reset_index(drop=True),
        recent=holdout.loc[holdout[BATCH_COLUMN] == batches[-1], columns].reset_index(drop=True),
        batches=batches,
    )
