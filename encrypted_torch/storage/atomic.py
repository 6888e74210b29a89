"""Atomic file writes: a reader sees the old file or the new one, never a half-written one.

Write to a temporary file in the same directory, fsync it, ``os.replace`` it over the target,
then fsync the directory so the rename itself survives a power cut. ``read_bounded`` is the
matching read of a file that may have been damaged or replaced: its size is bounded before reading.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import MissingFileError, StorageError

_CHUNK = 1 << 20


def tmp_path_for(path: Path) -> Path:
    """A unique temporary name next to ``path`` (same filesystem, so the rename is atomic)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def atomic_write_bytes(path: str | Path, data: bytes | Iterable[bytes], mode: int = 0o644) -> str:
    """Write ``data`` (bytes or an iterable of chunks) to ``path`` atomically; returns its sha256."""
    path = Path(path)
    tmp = tmp_path_for(path)
    digest = hashlib.sha256()
    chunks = [data] if isinstance(data, (bytes, bytearray, memoryview)) else data
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                digest.update(chunk)
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return digest.hexdigest()


def atomic_write_json(path: str | Path, obj: Any, mode: int = 0o644) -> None:
    """Write ``obj`` as indented JSON, atomically (manifests, session records)."""
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode(), mode)


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: str | Path) -> tuple[str, int]:
    """(hex sha256, size) of a file, read in chunks so memory stays bounded."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def read_bounded(path: str | Path, max_bytes: int, what: str, error: type[StorageError] = StorageError,
                 missing: str | None = None) -> bytes:
    """The bytes of ``path``, refused before reading when over ``max_bytes`` and bounded while reading
    (the file may grow); ``error`` (a StorageError subclass) names the file and what went wrong,
    MissingFileError (with ``missing``) when there is no file."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > max_bytes:
                raise error(path, f"{size} bytes is larger than any {what} ({max_bytes})")
            data = f.read(size + 1)
    except FileNotFoundError:
        raise MissingFileError(path, missing or f"no {what}") from None
    except OSError as err:
        raise error(path, f"cannot read the {what}: {err.strerror or err}") from None
    if len(data) != size:
        raise error(path, f"the {what} changed while it was read")
    return data
