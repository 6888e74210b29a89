"""The client's own data: a class-per-subfolder image folder, a CSV/JSONL of texts, or precomputed features.

``scan_data`` reads only what defaults need (sample and class counts, the feature width), so a dry run
costs no feature extraction. ``load_own_data`` then extracts features with the bundled backbones
(EfficientNet-Lite0 for images, all-MiniLM-L6-v2 for text; cached by ``features.extract``) and splits
them stratified with a recorded seed. Every bad input raises an ``OwnDataError`` subclass naming the
file and the fix; a few unreadable images are skipped with a warning and a count.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import json
import math
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import EncTorchError
from ..features import default_cache_dir, extract
from .splits import FeatureSplits, stratified_partition

__all__ = [
    "IMAGE_EXTENSIONS", "ClassTooSmallError", "DataFormatError", "DataSummary", "EmptyClassError",
    "LabelTypoError", "OwnData", "OwnDataError", "SingleClassError", "TooManyClassesError",
    "UnreadableFileError", "load_own_data", "read_feature_file", "read_images", "read_text_table", "scan_data",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
TEXT_COLUMNS = ("text", "utterance", "sentence", "message", "content", "query")
LABEL_COLUMNS = ("label", "labels", "class", "intent", "category", "target", "y")
MIN_PER_CLASS = 3  # one example each for train, validation and test
MAX_UNREADABLE_FRACTION = 0.1  # skip a few broken files; more means the folder is wrong
BACKBONE_WIDTH = {"efficientnet-lite0": 1280, "all-MiniLM-L6-v2": 384}


class OwnDataError(EncTorchError, ValueError):
    """The client's own data cannot be trained on as given; the message names the file and the fix."""


class DataFormatError(OwnDataError):
    """A file or folder of the wrong kind or layout (no label column, ragged rows, NaN features)."""


class EmptyClassError(OwnDataError):
    """A class subfolder without a single image."""


class UnreadableFileError(OwnDataError):
    """Too many image files that cannot be decoded (a few are skipped with a warning)."""


class SingleClassError(OwnDataError):
    """Only one class: there is nothing to tell apart."""


class ClassTooSmallError(OwnDataError):
    """A class with fewer examples than the three splits need."""


class LabelTypoError(OwnDataError):
    """A rare label that looks like a misspelling of a common one (or differs from one only in case)."""


class TooManyClassesError(OwnDataError):
    """More classes than the CKKS preset's slots can hold in a training step."""


@dataclass
class DataSummary:
    """What a scan finds, before any feature is extracted: enough to choose defaults and plan a run."""

    path: str
    kind: str  # "images", "text" or "features"
    labels: list[str]  # one per sample, in file order
    classes: list[str]
    num_features: int
    backbone: str | None
    sources: list[str] = field(default_factory=list)  # image paths, or the texts
    skipped: list[str] = field(default_factory=list)  # unreadable files left out
    features: torch.Tensor | None = None  # precomputed features (kind "features")

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    @property
    def counts(self) -> dict[str, int]:
        c = Counter(self.labels)
        return {k: c[k] for k in self.classes}


@dataclass
class OwnData:
    """Features split train / validation / test, and what inference needs to redo the extraction."""

    splits: FeatureSplits
    summary: DataSummary
    backbone: dict[str, Any]
    split_seed: int
    fractions: tuple[float, float, float]


# --- reading --------------------------------------------------------------------------------------------
def scan_data(path: str | Path, *, text_column: str | None = None, label_column: str | None = None,
              image_size: int = 160) -> DataSummary:
    """Read labels (and precomputed features) of ``path``; check classes; no backbone is run."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataFormatError(f"{p} does not exist; pass a folder of class subfolders of images, a CSV/JSONL "
                              "of texts with a label column, or features (.npz, .csv, .pt)")
    if p.is_dir():
        summary = read_images(p, image_size=image_size, decode=False)
    elif p.suffix.lower() in (".npz", ".pt"):
        summary = read_feature_file(p, label_column=label_column)
    elif p.suffix.lower() in (".csv", ".tsv", ".jsonl"):
        rows, columns = _read_table(p)
        label = _pick_label(p, columns, label_column)
        text = _pick_text(p, rows, columns, label, text_column)
        summary = (read_text_table(p, text_column=text, label_column=label, rows=rows) if text is not None
                   else read_feature_file(p, label_column=label, rows=rows))
    else:
        raise DataFormatError(f"{p}: unknown data file type {p.suffix!r}; use a folder of images, .csv, .tsv, "
                              ".jsonl, .npz or .pt")
    check_classes(summary)
    return summary


def read_images(root: Path, *, image_size: int = 160, decode: bool = True) -> DataSummary:
    """Image paths and labels of a class-per-subfolder folder (``decode``: also check every file opens)."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    loose = [f.name for f in root.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS]
    if not classes:
        hint = f" ({len(loose)} images lie directly in it)" if loose else ""
        raise DataFormatError(f"{root} has no class subfolders{hint}; put each class's images in a subfolder "
                              "named after the class: ROOT/cat/1.png, ROOT/dog/7.jpg, ...")
    paths, labels = [], []
    for name in classes:
        files = sorted(f for f in (root / name).rglob("*")
                       if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith("."))
        if not files:
            raise EmptyClassError(f"class folder {root / name} holds no image ({', '.join(IMAGE_EXTENSIONS)}); "
                                  "add images to it or remove the folder")
        paths += [str(f) for f in files]
        labels += [name] * len(files)
    summary = DataSummary(str(root), "images", labels, classes, BACKBONE_WIDTH["efficientnet-lite0"],
                          "efficientnet-lite0", paths)
    if decode:
        _drop_unreadable(summary, image_size)
    return summary


def _open_image(path: str, size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(im, dtype=np.uint8)


def load_images(paths: Sequence[str], size: int) -> tuple[torch.Tensor, list[int]]:
    """uint8 (n, 3, size, size) of the readable files, and the indices of the unreadable ones."""
    out, bad = [], []
    for i, path in enumerate(paths):
        try:
            out.append(_open_image(path, size))
        except Exception:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError...)
            bad.append(i)
    stack = np.stack(out) if out else np.zeros((0, size, size, 3), np.uint8)
    return torch.from_numpy(stack).permute(0, 3, 1, 2).contiguous(), bad


def _drop_unreadable(summary: DataSummary, size: int) -> torch.Tensor:
    images, bad = load_images(summary.sources, size)
    if bad:
        names = [summary.sources[i] for i in bad]
        if len(bad) > MAX_UNREADABLE_FRACTION * len(summary.sources):
            raise UnreadableFileError(f"{len(bad)} of {len(summary.sources)} images cannot be read, e.g. "
                                      f"{', '.join(names[:3])}; convert them to PNG or JPEG (or delete them)")
        warnings.warn(f"skipped {len(bad)} unreadable image(s): {', '.join(names[:5])}", UserWarning, stacklevel=3)
        keep = [i for i in range(len(summary.sources)) if i not in set(bad)]
        summary.sources = [summary.sources[i] for i in keep]
        summary.labels = [summary.labels[i] for i in keep]
        summary.skipped = names
        for name in summary.classes:
            if name not in summary.labels:
                raise EmptyClassError(f"every image of class {name!r} is unreadable; fix or remove "
                                      f"{Path(summary.path) / name}")
    return images


def _read_table(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of a CSV/TSV (header line first) or JSONL (one object per line), and the column names."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataFormatError(f"{path} is not UTF-8 text ({err}); save it as UTF-8") from None
    if path.suffix.lower() == ".jsonl":
        rows = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataFormatError(f"{path}:{lineno}: not a JSON object ({err.msg})") from None
            if not isinstance(obj, dict):
                raise DataFormatError(f"{path}:{lineno}: each line must be a JSON object like "
                                      '{"text": "...", "label": "..."}')
            rows.append(obj)
        columns = list(dict.fromkeys(k for r in rows for k in r))
    else:
        reader = csv.DictReader(text.splitlines(), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        columns = list(reader.fieldnames or [])
        rows = []
        for lineno, row in enumerate(reader, start=2):
            if None in row or any(v is None for v in row.values()):
                raise DataFormatError(f"{path}:{lineno}: this row has {len(row) + len(row.get(None) or []) - 1} "
                                      f"fields, the header {len(columns)}; quote fields that contain commas")
            rows.append(row)
    if not rows:
        raise DataFormatError(f"{path} holds no rows")
    return rows, columns


def _pick_label(path: Path, columns: list[str], label_column: str | None) -> str:
    if label_column is not None:
        if label_column not in columns:
            raise DataFormatError(f"{path}: no column {label_column!r}; columns are {columns}")
        return label_column
    found = [c for c in columns if c.strip().lower() in LABEL_COLUMNS]
    if not found:
        raise DataFormatError(f"{path}: no label column (looked for {', '.join(LABEL_COLUMNS)}; columns are "
                              f"{columns}); name it 'label' or pass --label-column")
    return found[0]


def _pick_text(path: Path, rows: list[dict[str, Any]], columns: list[str], label: str,
               text_column: str | None) -> str | None:
    """The text column, or None when every other column is numeric (a table of features)."""
    if text_column is not None:
        if text_column not in columns:
            raise DataFormatError(f"{path}: no column {text_column!r}; columns are {columns}")
        return text_column
    named = [c for c in columns if c.strip().lower() in TEXT_COLUMNS]
    if named:
        return named[0]
    others = [c for c in columns if c != label]
    textual = [c for c in others if not all(_is_number(r.get(c)) for r in rows[:100])]
    if len(textual) == 1:
        return textual[0]
    if textual:
        raise DataFormatError(f"{path}: several text columns {textual}; pass --text-column")
    return None


def _is_number(v: Any) -> bool:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return True
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def _label_text(path: Path, v: Any, where: str) -> str:
    if v is None or (isinstance(v, str) and not v.strip()):
        raise DataFormatError(f"{path}: {where} has an empty label; fill it in or drop the row")
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v).strip()


def read_text_table(path: Path, *, text_column: str, label_column: str,
                    rows: list[dict[str, Any]] | None = None) -> DataSummary:
    """Texts and labels of a CSV/TSV/JSONL file."""
    rows = rows if rows is not None else _read_table(path)[0]
    first_line = 1 if path.suffix.lower() == ".jsonl" else 2
    texts, labels = [], []
    for i, row in enumerate(rows):
        where = f"row {i + first_line}"
        value = row.get(text_column)
        if not isinstance(value, str) or not value.strip():
            raise DataFormatError(f"{path}: {where} has no text in column {text_column!r}; fill it in or drop the row")
        texts.append(value.strip())
        labels.append(_label_text(path, row.get(label_column), where))
    return DataSummary(str(path), "text", labels, _class_order(labels), BACKBONE_WIDTH["all-MiniLM-L6-v2"],
                       "all-MiniLM-L6-v2", texts)


def read_feature_file(path: Path, *, label_column: str | None = None,
                      rows: list[dict[str, Any]] | None = None) -> DataSummary:
    """Precomputed features: .npz (arrays x/features and y/labels), .pt (a dict of the same) or a numeric CSV."""
    suffix = path.suffix.lower()
    if suffix in (".npz", ".pt"):
        try:
            blob: Any = (dict(np.load(path, allow_pickle=False)) if suffix == ".npz"
                         else torch.load(path, map_location="cpu", weights_only=True))
        except Exception as err:  # zip, pickle and torch raise many types on a damaged file
            raise DataFormatError(f"{path} cannot be read ({type(err).__name__}: {err})") from None
        if not isinstance(blob, dict):
            raise DataFormatError(f"{path}: expected a dict of arrays (features, labels), got {type(blob).__name__}")
        xkey = next((k for k in ("features", "x", "X") if k in blob), None)
        ykey = label_column or next((k for k in ("labels", "y", "label") if k in blob), None)
        if xkey is None or ykey not in blob:
            raise DataFormatError(f"{path}: needs arrays 'features' (n, d) and 'labels' (n,), has {sorted(blob)}")
        x = torch.as_tensor(np.asarray(blob[xkey]), dtype=torch.float32)
        raw_labels = np.asarray(blob[ykey]).reshape(-1).tolist()
        names = blob.get("classes")
        if names is not None:
            names = [str(n) for n in np.asarray(names).reshape(-1).tolist()]
    else:
        assert rows is not None and label_column is not None
        cols = [c for c in rows[0] if c != label_column]
        try:
            x = torch.tensor([[float(r[c]) for c in cols] for r in rows], dtype=torch.float32)
        except (TypeError, ValueError):
            raise DataFormatError(f"{path}: feature columns must be numbers; a text column needs a header "
                                  f"among {', '.join(TEXT_COLUMNS)} or --text-column") from None
        raw_labels = [r[label_column] for r in rows]
        names = None
    if x.dim() != 2 or x.shape[0] != len(raw_labels):
        raise DataFormatError(f"{path}: features must be (n, d) with one label per row, got {tuple(x.shape)} "
                              f"and {len(raw_labels)} labels")
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).any(1).nonzero()[0])
        raise DataFormatError(f"{path}: feature row {bad} holds NaN or inf; drop or fix it")
    labels = [_label_text(path, v, f"row {i}") for i, v in enumerate(raw_labels)]
    if names is not None:  # integer labels indexing the stored class names
        try:
            labels = [names[int(v)] for v in labels]
        except (ValueError, IndexError):
            raise DataFormatError(f"{path}: labels must index 'classes' (0..{len(names) - 1})") from None
    return DataSummary(str(path), "features", labels, _class_order(labels), int(x.shape[1]), None,
                       features=x)


def _class_order(labels: list[str]) -> list[str]:
    """Classes sorted, numerically when every label is an integer."""
    names = set(labels)
    if all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


# --- checks ---------------------------------------------------------------------------------------------
def check_classes(summary: DataSummary) -> None:
    """One class only, case/spelling variants of a label, classes too small to split: typed errors."""
    counts = summary.counts
    where = summary.path
    if len(counts) < 2:
        only = next(iter(counts), "none")
        raise SingleClassError(f"{where}: only one class ({only!r}, {summary.num_samples} samples); a classifier "
                               "needs at least two: add the other classes' data")
    common = [c for c, n in counts.items() if n >= MIN_PER_CLASS]
    by_fold: dict[str, list[str]] = {}
    for c in counts:
        by_fold.setdefault(c.casefold().replace("_", " ").replace("-", " ").strip(), []).append(c)
    for variants in by_fold.values():
        if len(variants) > 1:
            raise LabelTypoError(f"{where}: labels {variants} differ only in case or separators; spell them the "
                                 "same way")
    for c, n in sorted(counts.items(), key=lambda kv: kv[1]):
        if n >= MIN_PER_CLASS:
            continue
        near = difflib.get_close_matches(c, [k for k in common if k != c], n=1, cutoff=0.75)
        rows = [i for i, lab in enumerate(summary.labels) if lab == c][:5]
        shown = ([summary.sources[i] for i in rows] if summary.kind == "images"
                 else [f"row {i}" for i in rows])
        if near:
            raise LabelTypoError(f"{where}: label {c!r} ({n} sample(s): {', '.join(shown)}) looks like a typo of "
                                 f"{near[0]!r} ({counts[near[0]]} samples); correct it")
        raise ClassTooSmallError(f"{where}: class {c!r} has {n} sample(s) ({', '.join(shown)}); each class needs "
                                 f"at least {MIN_PER_CLASS} (train, validation, test): add examples or drop it")


def check_preset(num_classes: int, preset: str) -> None:
    """TooManyClassesError when a training step of ``num_classes`` classes does not fit the preset's slots."""
    from ..ckks.params import PRESETS, get_params
    from ..tensor.layout import next_pow2

    slots = get_params(preset).slots
    if next_pow2(num_classes) ** 2 > slots:
        fits = [name for name, p in PRESETS.items() if next_pow2(num_classes) ** 2 <= p.slots]
        most = 1 << int(math.log2(math.isqrt(slots)))
        fix = f"use --preset {fits[0]}" if fits else "merge classes"
        raise TooManyClassesError(f"{num_classes} classes do not fit preset {preset!r} (at most {most} classes in "
                                  f"{slots} slots); {fix}")


# --- features -------------------------------------------------------------------------------------------
def _cache_file(cache_dir: Path, summary: DataSummary, tag: str) -> Path:
    digest = hashlib.sha256(str(Path(summary.path).resolve()).encode()).hexdigest()[:16]
    return cache_dir / f"own_{Path(summary.path).stem}_{digest}_{tag}.pt"


def image_features(images: torch.Tensor, image_size: int, cache: Path | None = None,
                   progress: bool = True) -> torch.Tensor:
    """1280-d EfficientNet-Lite0 features of uint8 (n, 3, s, s) images (the `vision` extra)."""
    from .mnist import build_efficientnet_lite0

    model = build_efficientnet_lite0(image_size)
    return extract(model, images, batch_size=8, cache=cache, progress=progress)


def text_features(texts: Sequence[str], cache: Path | None = None, progress: bool = True) -> torch.Tensor:
    """384-d all-MiniLM-L6-v2 embeddings of ``texts`` (the `text` extra), in the given order."""
    from .snips import _tokenize, build_minilm_encoder

    encoder, tokenizer = build_minilm_encoder()
    tokens = _tokenize(tokenizer, texts, encoder.max_length)
    order = tokens[:, 1].sum(dim=1).argsort(stable=True)  # length-sorted batches carry little padding
    by_length = extract(encoder, tokens[order], batch_size=64, cache=cache, progress=progress)
    out = torch.empty_like(by_length)
    out[order] = by_length
    return out


def backbone_record(summary: DataSummary, image_size: int) -> dict[str, Any]:
    """What inference must redo before the classifier: the backbone and its input size."""
    if summary.kind == "images":
        return {"kind": "images", "name": "efficientnet-lite0", "image_size": image_size}
    if summary.kind == "text":
        return {"kind": "text", "name": "all-MiniLM-L6-v2"}
    return {"kind": "features", "name": None, "num_features": summary.num_features}


def load_own_data(path: str | Path, *, val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0,
                  text_column: str | None = None, label_column: str | None = None, image_size: int = 160,
                  cache_dir: str | Path | None = None, progress: bool = True,
                  summary: DataSummary | None = None) -> OwnData:
    """Scan, extract features (cached) and split stratified: HETAL's 70/10/20 by default."""
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise OwnDataError(f"need 0 < val_fraction, test_fraction and their sum < 1, got {val_fraction}, "
                           f"{test_fraction}")
    summary = summary or scan_data(path, text_column=text_column, label_column=label_column, image_size=image_size)
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if summary.kind == "images":
        images = _drop_unreadable(summary, image_size)
        check_classes(summary)
        x = image_features(images, image_size, _cache_file(cache_root, summary, f"lite0_{image_size}px"), progress)
    elif summary.kind == "text":
        x = text_features(summary.sources, _cache_file(cache_root, summary, "minilm"), progress)
    else:
        assert summary.features is not None
        x = summary.features
    index = {c: i for i, c in enumerate(summary.classes)}
    y = torch.tensor([index[lab] for lab in summary.labels], dtype=torch.int64)
    n = len(y)
    n_val, n_test = max(len(index), round(val_fraction * n)), max(len(index), round(test_fraction * n))
    if n - n_val - n_test < len(index):
        raise ClassTooSmallError(f"{summary.path}: {n} samples are too few to split into train, validation and "
                                 f"test sets that each hold all {len(index)} classes; add data")
    train, val, test = stratified_partition(y, (n - n_val - n_test, n_val, n_test), seed)
    splits = FeatureSplits((x[train], y[train]), (x[val], y[val]), (x[test], y[test]), list(summary.classes),
                           Path(summary.path).name)
    return OwnData(splits, summary, backbone_record(summary, image_size), seed,
                   (1 - val_fraction - test_fraction, val_fraction, test_fraction))
