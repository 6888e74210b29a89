"""Errors of the on-disk formats; each names the file it is about, so an operator can find it."""

from __future__ import annotations

from pathlib import Path

from ..errors import ContextMismatchError, SerializationError


class StorageError(SerializationError):
    """A file of an encrypted dataset or checkpoint that cannot be used; ``path`` names it."""

    def __init__(self, path: str | Path, message: str) -> None:
        self.path = Path(path)
        super().__init__(f"{self.path}: {message}")


class ManifestError(StorageError):
    """A manifest that is malformed or does not describe the files next to it."""


class MissingFileError(StorageError):
    """A file the manifest lists is not there."""


class ChecksumError(StorageError):
    """A file whose bytes differ from the checksum the manifest recorded."""


class TruncatedFileError(ChecksumError):
    """A file shorter than the manifest says (an interrupted copy or write)."""


class WrongKeyError(StorageError, ContextMismatchError):
    """Data encrypted under another public key (or other CKKS parameters) than the context's."""


class CheckpointError(StorageError):
    """A checkpoint that cannot be restored."""
