"""Atomic file writes: a reader sees the old file or the new one, never a half-written one.

Write to a temporary file in the same directory, fsync it, ``os.replace`` it over the target,
then fsync the directory so the rename itself survives a power cut.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any

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
