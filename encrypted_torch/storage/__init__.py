"""On-disk formats: encrypted dataset directories (streamed batch by batch) and training checkpoints."""

from .atomic import atomic_write_bytes, atomic_write_json, sha256_file
from .checkpoint import Checkpointer, decode_checkpoint, encode_checkpoint, load_checkpoint, save_checkpoint
from .dataset import DatasetWriter, DiskDataset, Manifest, StreamingLoader, open_dataset, read_manifest, write_dataset
from .errors import (
    CheckpointError,
    ChecksumError,
    ManifestError,
    MissingFileError,
    StorageError,
    TruncatedFileError,
    WrongKeyError,
)

__all__ = [
    "CheckpointError", "Checkpointer", "ChecksumError", "DatasetWriter", "DiskDataset", "Manifest", "ManifestError",
    "MissingFileError", "StorageError", "StreamingLoader", "TruncatedFileError", "WrongKeyError",
    "atomic_write_bytes", "atomic_write_json", "decode_checkpoint", "encode_checkpoint", "load_checkpoint",
    "open_dataset", "read_manifest", "save_checkpoint", "sha256_file", "write_dataset",
]
