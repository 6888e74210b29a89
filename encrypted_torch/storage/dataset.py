"""Encrypted datasets on disk: a manifest plus one file per ciphertext batch, read one batch at a time.

Layout of a dataset directory::

    manifest.json          shapes, layout, CKKS parameters, public-key fingerprint, per-file sha256
    batch-000000-x.et      EncTensor.to_bytes() of batch 0's features (grid tiling)
    batch-000000-y.et      ... its one-hot labels (horizontal tiling), absent for validation sets
    ...

Files are written atomically and the manifest last, so a directory with a manifest is complete.
The server streams batches from disk (``DiskDataset``): only the batch in use is in memory.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..ckks.params import CKKSParams
from ..data.dataset import BatchedRows, EncBatch, EncDataset
from ..errors import ContextMismatchError, SerializationError
from ..tensor.enctensor import EncTensor
from ..tensor.layout import BlockLayout
from .atomic import atomic_write_bytes, atomic_write_json, read_bounded, sha256_file
from .errors import ChecksumError, ManifestError, MissingFileError, StorageError, TruncatedFileError, WrongKeyError
from .jsonio import loads_strict

FORMAT = "encrypted_torch.dataset"
VERSION = 1
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 64 << 20
_MAX_COUNT = 1 << 24
_HEX = set("0123456789abcdef")


def params_record(params: CKKSParams, backend: str) -> dict[str, Any]:
    """The CKKS parameters as a manifest records them."""
    return {"backend": backend, "name": params.name, "n": params.poly_modulus_degree,
            "bits": list(params.coeff_bits), "scale_bits": params.scale_bits}


def batch_file(index: int, part: str) -> str:
    """The fixed file name of batch ``index``'s features (``"x"``) or labels (``"y"``)."""
    return f"batch-{index:06d}-{part}.et"


@dataclass(frozen=True)
class FileEntry:
    file: str
    bytes: int
    sha256: str


@dataclass(frozen=True)
class BatchEntry:
    rows: int
    x: FileEntry
    y: FileEntry | None


@dataclass(frozen=True)
class Manifest(BatchedRows):
    """What a dataset directory holds; ``from_json`` validates everything a reader relies on."""

    name: str
    num_classes: int
    num_features: int
    unit: tuple[int, int]
    ckks: dict[str, Any]
    fingerprint: str
    batches: tuple[BatchEntry, ...]

    def files(self) -> list[FileEntry]:
        return [f for b in self.batches for f in (b.x, b.y) if f is not None]

    def to_json(self) -> dict[str, Any]:
        def entry(f: FileEntry | None) -> dict | None:
            return None if f is None else {"file": f.file, "bytes": f.bytes, "sha256": f.sha256}

        return {"format": FORMAT, "version": VERSION, "name": self.name, "num_classes": self.num_classes,
                "num_features": self.num_features, "num_samples": self.num_samples, "unit": list(self.unit),
                "layout": {"x": "grid", "y": "horizontal"}, "has_labels": self.has_labels,
                "ckks": self.ckks, "public_key_fingerprint": self.fingerprint,
                "batches": [{"rows": b.rows, "x": entry(b.x), "y": entry(b.y)} for b in self.batches]}

    @classmethod
    def from_json(cls, obj: Any, path: str | Path = MANIFEST) -> Manifest:
        """Validate a parsed manifest; any problem is a ManifestError naming ``path``."""
        try:
            return cls._parse(obj)
        except KeyError as err:
            raise ManifestError(path, f"malformed manifest: missing field {str(err)[:60]}") from None
        except (TypeError, ValueError) as err:  # ShapeError and SerializationError are ValueErrors
            raise ManifestError(path, f"malformed manifest: {err}") from None

    @classmethod
    def _parse(cls, obj: Any) -> Manifest:
        if not isinstance(obj, dict):
            raise TypeError("the manifest is not a JSON object")
        if obj.get("format") != FORMAT or obj.get("version") != VERSION:
            raise ValueError(f"not a {FORMAT} version {VERSION} manifest")
        name = _text(obj["name"], "name")
        if not name or not all(ch.isalnum() or ch in "_-" for ch in name) or len(name) > 64:
            raise ValueError(f"dataset name {_show(name)} must be 1-64 letters, digits, '_' or '-'")
        classes, features = _int(obj["num_classes"], 1, 1 << 12), _int(obj["num_features"], 1, _MAX_COUNT)
        unit = obj["unit"]
        if not isinstance(unit, list) or len(unit) != 2:
            raise TypeError("unit must be [s0, s1]")
        s0, s1 = (_int(u, 1, 1 << 16) for u in unit)
        BlockLayout((1, 1), (s0, s1))  # powers of two, or ShapeError (a ValueError)
        ckks = _ckks_record(obj["ckks"])
        fingerprint = _text(obj["public_key_fingerprint"], "fingerprint")
        if len(fingerprint) != 64 or not set(fingerprint) <= _HEX:
            raise ValueError("public_key_fingerprint must be 64 lowercase hex digits")
        raw_batches = obj["batches"]
        if not isinstance(raw_batches, list) or not 0 < len(raw_batches) <= _MAX_COUNT:
            raise ValueError("batches must be a non-empty list")
        batches = []
        for i, b in enumerate(raw_batches):
            if not isinstance(b, dict) or set(b) != {"rows", "x", "y"}:
                raise TypeError(f"batch {i} must be an object with rows, x, y")
            x = _file_entry(b["x"], batch_file(i, "x"))
            y = None if b["y"] is None else _file_entry(b["y"], batch_file(i, "y"))
            batches.append(BatchEntry(_int(b["rows"], 1, _MAX_COUNT), x, y))
        m = cls(name, classes, features, (s0, s1), ckks, fingerprint, tuple(batches))
        if obj.get("num_samples") != m.num_samples:
            raise ValueError(f"num_samples {_show(obj.get('num_samples'))} but the batches hold {m.num_samples} rows")
        if any(b.y is not None for b in batches) and not m.has_labels:
            raise ValueError("either every batch has labels or none does")
        return m

    def check_context(self, ctx: Any, path: str | Path = MANIFEST) -> None:
        """WrongKeyError unless the data was encrypted under ``ctx``'s key and parameters."""
        expected = params_record(ctx.params, ctx.backend_name)
        if self.ckks != expected:
            raise WrongKeyError(path, f"data uses CKKS parameters {self.ckks}, the context {expected}")
        if self.fingerprint != ctx.fingerprint:
            raise WrongKeyError(path, f"data was encrypted under public key {self.fingerprint[:12]}…, "
                                      f"not this context's {ctx.fingerprint[:12]}…")
        if self.unit[0] * self.unit[1] != ctx.slots:
            raise ManifestError(path, f"unit {self.unit} does not fill the context's {ctx.slots} slots")


def _int(v: Any, lo: int, hi: int) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise ValueError(f"expected an integer in [{lo}, {hi}], got {_show(v)}")
    return v


def _ckks_record(ckks: Any) -> dict[str, Any]:
    """The CKKS parameters a manifest records, with the types ``params_record`` writes."""
    if not isinstance(ckks, dict) or set(ckks) != {"backend", "name", "n", "bits", "scale_bits"}:
        raise ValueError("ckks must hold backend, name, n, bits, scale_bits")
    if ckks["backend"] not in ("seal", "plain") or not isinstance(ckks["name"], str) or len(ckks["name"]) > 64:
        raise ValueError("ckks.backend must be seal or plain, ckks.name a short string")
    bits = ckks["bits"]
    if not isinstance(bits, list) or not 2 <= len(bits) <= 64:
        raise ValueError("ckks.bits must be a list of 2-64 prime sizes")
    _int(ckks["n"], 1024, 1 << 17), _int(ckks["scale_bits"], 1, 60), [_int(b, 1, 60) for b in bits]
    return ckks


def _show(v: Any) -> str:
    """A hostile value for an error message: scalars shortened, containers by type (their repr could
    recurse 10,000 levels deep or run to megabytes)."""
    if v is None or isinstance(v, (bool, int, float)):
        return repr(v) if not isinstance(v, int) or abs(v) < 10**30 else "a huge integer"
    if isinstance(v, str):
        return repr(v[:40]) + ("…" if len(v) > 40 else "")
    return f"a {type(v).__name__}"


def _text(v: Any, what: str) -> str:
    if not isinstance(v, str):
        raise TypeError(f"{what} must be a string")
    return v


def _file_entry(obj: Any, expected_name: str) -> FileEntry:
    if not isinstance(obj, dict) or set(obj) != {"file", "bytes", "sha256"}:
        raise ValueError(f"file entry for {expected_name} must hold file, bytes, sha256")
    if obj["file"] != expected_name:  # fixed names: no path can escape the directory
        raise ValueError(f"file {_show(obj['file'])} where {expected_name!r} belongs")
    digest = _text(obj["sha256"], "sha256")
    if len(digest) != 64 or not set(digest) <= _HEX:
        raise ValueError(f"{expected_name}: sha256 must be 64 lowercase hex digits")
    return FileEntry(expected_name, _int(obj["bytes"], 1, 1 << 40), digest)


def read_manifest(directory: str | Path) -> Manifest:
    """Parse and validate ``directory/manifest.json`` (not the files it lists)."""
    path = Path(directory) / MANIFEST
    raw = read_bounded(path, MAX_MANIFEST_BYTES, "manifest", ManifestError,
                       missing="no manifest: not an encrypted dataset directory, or its write did not finish")
    try:
        obj = loads_strict(raw, "manifest JSON", max_bytes=MAX_MANIFEST_BYTES)
    except SerializationError as err:
        raise ManifestError(path, str(err)) from None
    return Manifest.from_json(obj, path)


class DatasetWriter:
    """Write an encrypted dataset batch by batch (bounded memory); ``close()`` writes the manifest."""

    def __init__(self, directory: str | Path, ctx: Any, *, name: str, num_classes: int, num_features: int,
                 unit: tuple[int, int]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / MANIFEST).unlink(missing_ok=True)  # incomplete until close()
        self.ctx, self.name, self.unit = ctx, name, tuple(unit)
        self.num_classes, self.num_features = num_classes, num_features
        self._batches: list[BatchEntry] = []

    def add(self, x: EncTensor, y: EncTensor | None, rows: int) -> None:
        """Write one batch's files (atomically) and remember their checksums."""
        i = len(self._batches)
        if x.layout != BlockLayout((rows, self.num_features), self.unit, "grid"):
            raise ManifestError(self.directory / batch_file(i, "x"), f"features of layout {x.layout} do not fit "
                                f"({rows}, {self.num_features}) grid blocks of {self.unit}")
        self._batches.append(BatchEntry(rows, self._write(x, batch_file(i, "x")),
                                        None if y is None else self._write(y, batch_file(i, "y"))))

    def _write(self, t: EncTensor, name: str) -> FileEntry:
        if t.ctx.fingerprint != self.ctx.fingerprint:
            raise WrongKeyError(self.directory / name, "tensor encrypted under another key than the dataset's")
        data = t.to_bytes()
        digest = atomic_write_bytes(self.directory / name, data)
        return FileEntry(name, len(data), digest)

    def close(self) -> Manifest:
        """Write the manifest, which marks the directory complete."""
        m = Manifest(self.name, self.num_classes, self.num_features, self.unit,
                     params_record(self.ctx.params, self.ctx.backend_name), self.ctx.fingerprint,
                     tuple(self._batches))
        Manifest.from_json(m.to_json(), self.directory / MANIFEST)  # refuse to write what we could not read
        atomic_write_json(self.directory / MANIFEST, m.to_json())
        return m


def write_dataset(dataset: EncDataset, directory: str | Path) -> Manifest:
    """Save an in-memory EncDataset as a dataset directory."""
    first = dataset.batches[0].x
    w = DatasetWriter(directory, first.ctx, name=dataset.name, num_classes=dataset.num_classes,
                      num_features=dataset.num_features, unit=dataset.unit)
    for b in dataset.batches:
        w.add(b.x, b.y, b.rows)
    return w.close()


def open_dataset(directory: str | Path, ctx: Any, verify: bool = False) -> DiskDataset:
    """Open a dataset directory for ``ctx`` (the server's PublicContext).

    Checks the manifest, the key and every file's presence and size now; with ``verify`` also
    every checksum (reads everything once). Each batch's checksum is checked again when loaded.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    manifest.check_context(ctx, directory / MANIFEST)
    for entry in manifest.files():
        check_file(directory / entry.file, entry, full=verify)
    return DiskDataset(directory, manifest, ctx)


def verify_files(directory: str | Path) -> Manifest:
    """Every file the manifest lists is present with its size and sha256 (no keys needed); returns the manifest."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    for entry in manifest.files():
        check_file(directory / entry.file, entry, full=True)
    return manifest


def check_file(path: Path, entry: FileEntry, full: bool = True) -> None:
    """The file exists with the recorded size (and, if ``full``, the recorded sha256)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise MissingFileError(path, "listed in the manifest but missing") from None
    if size < entry.bytes:
        raise TruncatedFileError(path, f"truncated: {size} bytes, the manifest says {entry.bytes}")
    if size > entry.bytes:
        raise ChecksumError(path, f"{size} bytes, the manifest says {entry.bytes}")
    if full and sha256_file(path)[0] != entry.sha256:
        raise ChecksumError(path, "sha256 differs from the manifest's: the file is corrupted or replaced")


class _LazyBatches(Sequence):
    """``dataset.batches`` that loads batch i from disk when indexed (nothing is cached)."""

    def __init__(self, dataset: DiskDataset) -> None:
        self._dataset = dataset

    def __len__(self) -> int:
        return len(self._dataset.manifest.batches)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self._dataset.load_batch(i)


class DiskDataset(EncDataset):
    """An EncDataset whose batches stay on disk until used; a drop-in for the Trainer and loaders."""

    def __init__(self, directory: Path, manifest: Manifest, ctx: Any) -> None:
        self.directory, self.manifest, self.ctx = directory, manifest, ctx
        super().__init__(_LazyBatches(self), manifest.num_classes, manifest.num_features, manifest.unit,
                         manifest.name, {"directory": str(directory)})

    @property
    def num_samples(self) -> int:
        return self.manifest.num_samples

    @property
    def has_labels(self) -> bool:
        return self.manifest.has_labels

    def load_batch(self, i: int) -> EncBatch:
        """Read batch ``i`` from disk, checking size, sha256, key and layout."""
        entry = self.manifest.batches[i]
        x = self._load(entry.x, BlockLayout((entry.rows, self.num_features), self.unit, "grid"))
        y = None
        if entry.y is not None:
            y = self._load(entry.y, BlockLayout((entry.rows, self.num_classes), self.unit, "horizontal"))
        return EncBatch(x, y, entry.rows, i, self.name)

    def _load(self, entry: FileEntry, layout: BlockLayout) -> EncTensor:
        path = self.directory / entry.file
        check_file(path, entry, full=False)
        data = path.read_bytes()
        if len(data) != entry.bytes:
            raise TruncatedFileError(path, f"{len(data)} bytes read, the manifest says {entry.bytes}")
        if hashlib.sha256(data).hexdigest() != entry.sha256:
            raise ChecksumError(path, "sha256 differs from the manifest's: the file is corrupted or replaced")
        try:
            t = EncTensor.from_bytes(data, self.ctx)
        except ContextMismatchError as err:
            raise WrongKeyError(path, str(err)) from None
        except SerializationError as err:
            raise StorageError(path, f"not a valid encrypted tensor: {err}") from None
        if t.layout != layout:
            raise ManifestError(path, f"holds a {t.layout} tensor, the manifest implies {layout}")
        return t


class StreamingLoader:
    """A dataset's batches in a new order each epoch, resumable mid-epoch.

    Same order as ``data.DataLoader`` for the same seed (the in-process run's), at most
    ``max_steps`` batches per epoch; ``iter_from(k)`` skips k batches without loading them.
    """

    def __init__(self, dataset: EncDataset, shuffle: bool = True, seed: int = 0,
                 max_steps: int | None = None) -> None:
        self.dataset, self.shuffle, self.max_steps = dataset, shuffle, max_steps
        self._rng = random.Random(seed)

    def __len__(self) -> int:
        n = len(self.dataset)
        return n if self.max_steps is None else min(n, self.max_steps)

    def __iter__(self) -> Iterator[EncBatch]:
        return self.iter_from(0)

    def iter_from(self, start: int) -> Iterator[EncBatch]:
        """This epoch's batches after the first ``start`` (the epoch's shuffle happens now)."""
        order = list(range(len(self.dataset)))
        if self.shuffle:
            self._rng.shuffle(order)
        order = order[: len(self)]
        batches = self.dataset.batches
        return (batches[i] for i in order[start:])

    def rng_state(self) -> object:
        return self._rng.getstate()

    def set_rng_state(self, state: object) -> None:
        self._rng.setstate(state)
