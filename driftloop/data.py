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
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class DataFileError(Exception):
    """A landed file that cannot be read as a table; the message is the quarantine reason."""


def bytes_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def partition_key(file_name: str, sha256: str) -> str:
    """`<name>-<hash prefix>`: readable in the UI, unique per content."""
    return f"{_UNSAFE.sub('_', file_name)}-{sha256[:12]}"


def file_name_of(key: str) -> str:
    return key.rsplit("-", 1)[0]


def read_table(file_name: str, data: bytes) -> pd.DataFrame:
    """Parse a CSV or Parquet file's bytes, turning every failure into one readable reason."""
    suffix = Path(file_name).suffix.lower()
    try:
        buffer = io.BytesIO(data)
        frame = pd.read_parquet(buffer) if suffix == ".parquet" else pd.read_csv(buffer)
    except Exception as error:
        raise DataFileError(f"unreadable {suffix} file: {error}".strip()) from error
    if frame.empty:
        raise DataFileError("file has no rows")
    return frame


def quarantine(landing: Folder, file_name: str, quarantine_to: Folder, reasons: list[str]) -> str:
    """Move a rejected file aside with a `<name>.reason.json` next to it; returns its new URL."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    target = f"{stamp}-{file_name}"
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
    batches = tuple(dict.fromkeys(rows[BATCH_COLUMN]))
    unique = rows.drop_duplicates(subset=columns, keep="last").reset_index(drop=True)
    buckets = _salted(row_hashes(unique[columns]), seed) % np.uint64(10_000)
    in_holdout = buckets < holdout_fraction * 10_000
    holdout = unique[in_holdout]
    return TrainingSet(
        data_hash=content_hash(unique[columns]),
        schema=schema,
        train=unique.loc[~in_holdout, columns].reset_index(drop=True),
        holdout=holdout[columns].reset_index(drop=True),
        recent=holdout.loc[holdout[BATCH_COLUMN] == batches[-1], columns].reset_index(drop=True),
        batches=batches,
    )
