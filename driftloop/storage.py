"""Folders of files that are local directories or S3 prefixes, through pyarrow's file systems.

The landing zone and the serving log are folders one party writes and another reads; the
scale-out deployment puts them in S3. One small interface keeps ingest, serving and
monitoring free of "if S3" branches, and every write is published whole (written under a
hidden name, then moved), so a reader never sees half a file.

Names are plain file names that cannot leave the folder, and a local folder is listed and
read without following symlinks (the landing zone is written by others: a link there could
point at the MLflow store or a credential file).
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import shutil
import stat
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
Readable = io.RawIOBase | pa.NativeFile
_CHUNK = 1 << 20


class UnsafeName(ValueError):
    """A name that is not one plain file name inside the folder (`..`, `/`, NUL, empty)."""


class RefusedFile(OSError):
    """A listed entry driftloop will not read: a symlink, a special file, or too large."""


def is_s3(url: str) -> bool:
    return url.startswith(S3_SCHEME)


@dataclass(frozen=True)
class StoredFile:
    """One entry of a folder; `kind` is "file" for a regular file (the only kind read), else
    "symlink", "directory", "fifo", "socket", "device" or "other" as the listing saw it."""

    name: str
    size: int
    mtime_ns: int
    kind: str = "file"


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
        """Published regular files directly in this folder, by name; hidden (in-progress)
        ones, symlinks and special files skipped."""
        return [entry for entry in self.entries(suffixes) if entry.kind == "file"]

    def entries(self, suffixes: tuple[str, ...] = ()) -> list[StoredFile]:
        """Every visible entry with a matching suffix, of any kind, by name. Local entries are
        seen with `lstat`: a symlink is reported as one, never as what it points to."""
        wanted = suffixes or ("",)
        if self.local_path is None:
            selector = pafs.FileSelector(self.root, allow_not_found=True, recursive=False)
            found = [
                StoredFile(info.base_name, info.size or 0, info.mtime_ns or 0, _kind_of(info))
                for info in self.fs.get_file_info(selector)
                if not info.base_name.startswith(".") and info.base_name.lower().endswith(wanted)
            ]
        else:
            found = []
            with suppress(FileNotFoundError, NotADirectoryError), os.scandir(self.root) as it:
                for entry in it:
                    if entry.name.startswith(".") or not entry.name.lower().endswith(wanted):
                        continue
                    with suppress(FileNotFoundError):  # removed since the directory was read
                        found.append(_local_entry(entry.name, entry.stat(follow_symlinks=False)))
        return sorted(found, key=lambda f: f.name)

    def info(self, name: str) -> StoredFile | None:
        """The regular file `name`, or None when it is missing or not a regular file."""
        path = self._path(name)
        if self.local_path is None:
            info = self.fs.get_file_info(path)
            found = StoredFile(name, info.size or 0, info.mtime_ns or 0, _kind_of(info))
        else:
            try:
                found = _local_entry(name, os.lstat(path))
            except FileNotFoundError:
                return None
        return found if found.kind == "file" else None

    @contextmanager
    def open_input(self, name: str, max_bytes: int | None = None) -> Iterator[Readable]:
        """A binary stream of the regular file `name`. Locally it is opened without following
        a symlink and without blocking on a FIFO, and checked on the open descriptor, so a
        swap after the listing cannot redirect the read. A file over `max_bytes` is refused."""
        path = self._path(name)
        if self.local_path is None:
            info = self.fs.get_file_info(path)
            if info.type == pafs.FileType.NotFound:
                raise FileNotFoundError(errno.ENOENT, "no such file", path)
            _check_entry(StoredFile(name, info.size or 0, 0, _kind_of(info)), max_bytes)
            with self.fs.open_input_stream(path) as stream:
                yield stream
            return
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(path, flags)
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise RefusedFile(errno.ELOOP, "a symbolic link: not followed", name) from None
            raise
        with os.fdopen(fd, "rb", buffering=0) as stream:
            _check_entry(_local_entry(name, os.fstat(fd)), max_bytes)
            yield stream

    def read_bytes(self, name: str, max_bytes: int | None = None) -> bytes:
        """The whole file; one that grew past `max_bytes` while being read is refused too."""
        with self.open_input(name, max_bytes) as stream:
            return _read_all(stream, name, max_bytes)

    def sha256(self, name: str, max_bytes: int | None = None) -> str:
        """The file's SHA-256, read in chunks: a large file is hashed in constant memory."""
        digest = hashlib.sha256()
        with self.open_input(name, max_bytes) as stream:
            read = 0
            while chunk := stream.read(_CHUNK):
                read += len(chunk)
                _check_size(name, read, max_bytes)
                digest.update(chunk)
        return digest.hexdigest()

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
        """Move a file into another folder: a rename on one disk (it moves the entry itself,
        never what a link points to), else a copy then delete (across devices and S3)."""
        target._ensure_root()
        source, destination = self._path(name), target._path(new_name)
        if self.local_path is not None and target.local_path is not None:
            with self.open_input(name):  # refuses a symlink or special file before moving
                pass
            try:
                os.rename(source, destination)
                return
            except OSError as error:
                if error.errno != errno.EXDEV:
                    raise
        same_store = (type(target.fs), target.s3_endpoint_url) == (
            type(self.fs),
            self.s3_endpoint_url,
        )
        if same_store and self.local_path is None:
            self.fs.copy_file(source, destination)
        else:
            with self.open_input(name) as stream, target.publishing(new_name) as out:
                shutil.copyfileobj(stream, out, _CHUNK)
        self.fs.delete_file(source)

    def delete(self, name: str) -> None:
        """Remove one file; one already gone is fine (another writer removed it)."""
        with suppress(FileNotFoundError):
            self.fs.delete_file(self._path(name))

    def read_parquet(self, names: list[str]) -> list[pd.DataFrame]:
        return [pd.read_parquet(self._path(name), filesystem=self.fs) for name in names]

    def _path(self, name: str) -> str:
        """The full path of a plain name, which must stay directly inside this folder."""
        if not name or name in (".", "..") or "/" in name or "\0" in name:
            raise UnsafeName(f"{name!r} is not a plain file name inside {self.url}")
        path = f"{self.root}/{name}"
        if self.local_path is not None and os.path.dirname(os.path.abspath(path)) != self.root:
            raise UnsafeName(f"{name!r} resolves outside {self.url}")
        return path

    def _ensure_root(self) -> None:
        if self.local_path is not None:
            self.fs.create_dir(self.root, recursive=True)


_LOCAL_KINDS = (
    (stat.S_ISREG, "file"),
    (stat.S_ISLNK, "symlink"),
    (stat.S_ISDIR, "directory"),
    (stat.S_ISFIFO, "fifo"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISBLK, "device"),
    (stat.S_ISCHR, "device"),
)


def _local_entry(name: str, status: os.stat_result) -> StoredFile:
    kind = next((kind for test, kind in _LOCAL_KINDS if test(status.st_mode)), "other")
    return StoredFile(name, status.st_size, status.st_mtime_ns, kind)


def _kind_of(info: pafs.FileInfo) -> str:
    return {pafs.FileType.File: "file", pafs.FileType.Directory: "directory"}.get(
        info.type, "other"
    )


def _check_entry(entry: StoredFile, max_bytes: int | None) -> None:
    if entry.kind != "file":
        raise RefusedFile(errno.EINVAL, f"not a regular file but a {entry.kind}", entry.name)
    _check_size(entry.name, entry.size, max_bytes)


def _check_size(name: str, size: int, max_bytes: int | None) -> None:
    if max_bytes is not None and size > max_bytes:
        raise RefusedFile(errno.EFBIG, f"larger than the cap of {max_bytes:,} bytes", name)


def _read_all(stream: Readable, name: str, max_bytes: int | None) -> bytes:
    buffer = io.BytesIO()
    while chunk := stream.read(_CHUNK):
        buffer.write(chunk)
        _check_size(name, buffer.tell(), max_bytes)
    return buffer.getvalue()


def _s3(endpoint_url: str | None) -> pafs.S3FileSystem:
    """Credentials and region from the standard AWS environment; an endpoint for MinIO/moto."""
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    if endpoint_url is None:
        return pafs.S3FileSystem(region=region)
    endpoint = urlsplit(endpoint_url if "://" in endpoint_url else f"https://{endpoint_url}")
    return pafs.S3FileSystem(
        region=region, endpoint_override=endpoint.netloc, scheme=endpoint.scheme or "https"
    )
