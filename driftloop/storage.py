"""Folders of files that are local directories or S3 prefixes, through pyarrow's file systems.

The landing zone and the serving log are folders one party writes and another reads; the
scale-out deployment puts them in S3. One small interface keeps ingest, serving and
monitoring free of "if S3" branches, and every write is published whole (written under a
hidden name, then moved), so a reader never sees half a file.
"""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pandas as pd
import pyarrow as pa
from pyarrow import fs as pafs

S3_SCHEME = "s3://"


def is_s3(url: str) -> bool:
    return url.startswith(S3_SCHEME)


@dataclass(frozen=True)
class StoredFile:
    name: str
    size: int
    mtime_ns: int


@dataclass
class Upload:
    """A file being written under a hidden name, published by a move when committed."""

    fs: pafs.FileSystem
    hidden: str
    final: str
    stream: pa.NativeFile

    def commit(self) -> None:
        self.stream.close()
        self.fs.move(self.hidden, self.final)

    def abort(self) -> None:
        with suppress(OSError):
            self.stream.close()
        with suppress(OSError):
            self.fs.delete_file(self.hidden)


class Folder:
    """A directory or an `s3://bucket/prefix`; names are plain file names inside it."""

    def __init__(self, url: str | Path, s3_endpoint_url: str | None = None) -> None:
        url = str(url)
        self.s3_endpoint_url = s3_endpoint_url
        if is_s3(url):
            self.url = url.rstrip("/")
            self.root = self.url.removeprefix(S3_SCHEME)
            self.fs: pafs.FileSystem = _s3(s3_endpoint_url)
        else:
            self.root = str(Path(url).expanduser().resolve())
            self.url = self.root
            self.fs = pafs.LocalFileSystem()

    def __repr__(self) -> str:
        return f"Folder({self.url!r})"

    def __str__(self) -> str:
        return self.url

    def child(self, name: str) -> Folder:
        return Folder(f"{self.url}/{name}", self.s3_endpoint_url)

    @property
    def local_path(self) -> Path | None:
        """The directory on this machine, or None for an S3 prefix."""
        return None if is_s3(self.url) else Path(self.root)

    def files(self, suffixes: tuple[str, ...] = ()) -> list[StoredFile]:
        """Published files directly in this folder, by name; hidden (in-progress) ones skipped."""
        selector = pafs.FileSelector(self.root, allow_not_found=True, recursive=False)
        found = [
            StoredFile(info.base_name, info.size or 0, info.mtime_ns or 0)
            for info in self.fs.get_file_info(selector)
            if info.type == pafs.FileType.File
            and not info.base_name.startswith(".")
            and info.base_name.lower().endswith(suffixes or ("",))
        ]
        return sorted(found, key=lambda f: f.name)

    def info(self, name: str) -> StoredFile | None:
        info = self.fs.get_file_info(self._path(name))
        if info.type != pafs.FileType.File:
            return None
        return StoredFile(name, info.size or 0, info.mtime_ns or 0)

    def read_bytes(self, name: str) -> bytes:
        with self.fs.open_input_stream(self._path(name)) as stream:
            return stream.read()

    def write_bytes(self, name: str, data: bytes) -> None:
        with self.publishing(name) as stream:
            stream.write(data)

    def write_frame(self, name: str, frame: pd.DataFrame) -> None:
        """A DataFrame as Parquet or CSV, chosen by the name's suffix."""
        buffer = io.BytesIO()
        if name.lower().endswith(".csv"):
            frame.to_csv(buffer, index=False)
        else:
            frame.to_parquet(buffer, index=False)
        self.write_bytes(name, buffer.getvalue())

    @contextmanager
    def publishing(self, name: str) -> Iterator[pa.NativeFile]:
        """A stream to write `name` through: it appears under its name only when closed."""
        upload = self.upload(name)
        try:
            yield upload.stream
        except BaseException:
            upload.abort()
            raise
        upload.commit()

    def upload(self, name: str) -> Upload:
        """An open upload of `name` that stays hidden until committed (long-lived writers)."""
        self._ensure_root()
        hidden = self._path(f".{name}.{uuid.uuid4().hex[:8]}.inprogress")
        return Upload(self.fs, hidden, self._path(name), self.fs.open_output_stream(hidden))

    def move_to(self, name: str, target: Folder, new_name: str) -> None:
        """Move a file into another folder (copy then delete: works across devices and S3)."""
        target._ensure_root()
        same_store = (type(target.fs), target.s3_endpoint_url) == (
            type(self.fs),
            self.s3_endpoint_url,
        )
        if same_store:
            self.fs.copy_file(self._path(name), target._path(new_name))
        else:
            target.write_bytes(new_name, self.read_bytes(name))
        self.fs.delete_file(self._path(name))

    def read_parquet(self, names: list[str]) -> list[pd.DataFrame]:
        return [pd.read_parquet(self._path(name), filesystem=self.fs) for name in names]

    def _path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def _ensure_root(self) -> None:
        if self.local_path is not None:
            self.fs.create_dir(self.root, recursive=True)


def _s3(endpoint_url: str | None) -> pafs.S3FileSystem:
    """Credentials and region from the standard AWS environment; an endpoint for MinIO/moto."""
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    if endpoint_url is None:
        return pafs.S3FileSystem(region=region)
    endpoint = urlsplit(endpoint_url if "://" in endpoint_url else f"https://{endpoint_url}")
    return pafs.S3FileSystem(
        region=region, endpoint_override=endpoint.netloc, scheme=endpoint.scheme or "https"
    )
