"""``python -m encrypted_torch.client predict --model OUT/model.pt FILES``: classify new files locally.

The saved model (``save_model``) is a ``torch.save`` of the decrypted classifier's state_dict with what
inference needs: class names, the backbone and its input size, and the training normalisation.
Inputs follow the backbone: image files or folders for an image model, a CSV/JSONL/TXT of texts (or
``--text``) for a text model, feature files (.npz/.csv/.pt) for a features model.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

import torch

from ..datasets.own_data import IMAGE_EXTENSIONS, DataFormatError, OwnDataError, load_images
from ..errors import EncTorchError

FORMAT = "encrypted_torch.model/v1"


def save_model(path: Path, model: torch.nn.Linear, inference: dict[str, Any]) -> None:
    """``torch.save`` the decrypted classifier with its classes, backbone and normalisation."""
    norm = inference["normalisation"]
    torch.save({"format": FORMAT, "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "classes": list(inference["classes"]), "backbone": dict(inference["backbone"]),
                "normalisation": {"mean": norm["mean"].cpu(), "std": norm["std"].cpu(), "unit_rows": True}}, path)


class Classifier:
    """A saved model, ready to classify features or raw inputs of its backbone's kind."""

    def __init__(self, blob: dict[str, Any]) -> None:
        sd = blob["state_dict"]
        out_f, in_f = sd["weight"].shape
        self.linear = torch.nn.Linear(in_f, out_f, dtype=sd["weight"].dtype)
        self.linear.load_state_dict(sd)
        self.classes: list[str] = list(blob["classes"])
        self.backbone: dict[str, Any] = dict(blob["backbone"])
        self.mean, self.std = blob["normalisation"]["mean"], blob["normalisation"]["std"]

    @classmethod
    def load(cls, path: str | Path) -> Classifier:
        """Load ``model.pt`` (weights only: no code runs from the file)."""
        try:
            blob = torch.load(Path(path), map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise DataFormatError(f"no model at {path}; train first (the client writes OUTPUT/model.pt)") from None
        except Exception as err:  # a damaged or foreign file
            raise DataFormatError(f"{path} is not a saved encrypted_torch model ({type(err).__name__})") from None
        if not isinstance(blob, dict) or blob.get("format") != FORMAT:
            raise DataFormatError(f"{path} is not a saved encrypted_torch model (format {FORMAT})")
        return cls(blob)

    def features(self, inputs: list[str], texts: list[str] | None = None) -> tuple[torch.Tensor, list[str]]:
        """The backbone's features of ``inputs`` (paths) or ``texts``, and a name for each row."""
        x, names = backbone_features(self.backbone, inputs, texts)
        if x.shape[1] != self.linear.in_features:
            raise DataFormatError(f"features have {x.shape[1]} columns, the model {self.linear.in_features}")
        return x, names

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities of raw features (normalised as in training)."""
        from ..hetal.prepare import normalise_with

        if x.shape[1] != self.linear.in_features:
            raise DataFormatError(f"features have {x.shape[1]} columns, the model expects {self.linear.in_features}")
        with torch.no_grad():
            z = normalise_with(x, self.mean, self.std).to(self.linear.weight.dtype)
            return torch.softmax(self.linear(z), dim=1)


def backbone_features(backbone: dict[str, Any], inputs: list[str],
                      texts: list[str] | None = None) -> tuple[torch.Tensor, list[str]]:
    """Raw (unnormalised) features of new inputs through the training's backbone (``inference.pt``'s record):
    image files or folders, text files (or ``texts``), or feature files; and a name for each row."""
    kind = backbone["kind"]
    if kind == "images":
        from ..datasets.own_data import image_features

        files = _expand_images(inputs)
        images, bad = load_images(files, backbone["image_size"])
        if bad:
            raise OwnDataError(f"cannot read {', '.join(files[i] for i in bad[:3])}; use PNG or JPEG files")
        return image_features(images, backbone["image_size"], progress=False), files
    if kind == "text":
        from ..datasets.own_data import text_features

        rows = list(texts or [])
        for p in inputs:
            rows += _read_texts(Path(p))
        if not rows:
            raise OwnDataError("no text to classify: pass files (CSV/JSONL with a text column, or TXT, one per "
                               "line) or --text")
        return text_features(rows, progress=False), rows
    xs, names = [], []
    for p in inputs:
        x = _read_feature_rows(Path(p))
        xs.append(x)
        names += [f"{p}:{i}" for i in range(len(x))]
    if not xs:
        raise OwnDataError("no feature file to classify")
    return torch.cat(xs), names


def _expand_images(inputs: list[str]) -> list[str]:
    files = []
    for p in map(Path, inputs):
        if p.is_dir():
            files += sorted(str(f) for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS)
        elif p.exists():
            files.append(str(p))
        else:
            raise DataFormatError(f"{p} does not exist")
    if not files:
        raise OwnDataError(f"no image in {', '.join(inputs)} ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def _read_texts(path: Path) -> list[str]:
    from ..datasets.own_data import TEXT_COLUMNS, _read_table

    if not path.exists():
        raise DataFormatError(f"{path} does not exist")
    if path.suffix.lower() in (".csv", ".tsv", ".jsonl"):
        rows, columns = _read_table(path)
        col = next((c for c in columns if c.strip().lower() in TEXT_COLUMNS), None)
        if col is None:
            raise DataFormatError(f"{path}: no text column (one of {', '.join(TEXT_COLUMNS)})")
        return [str(r[col]).strip() for r in rows if str(r.get(col) or "").strip()]
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _read_feature_rows(path: Path) -> torch.Tensor:
    if path.suffix.lower() == ".npz":
        import numpy as np

        blob = dict(np.load(path, allow_pickle=False))
        key = next((k for k in ("features", "x", "X") if k in blob), None)
        if key is None:
            raise DataFormatError(f"{path}: needs an array 'features'")
        return torch.as_tensor(blob[key], dtype=torch.float32)
    if path.suffix.lower() == ".pt":
        blob = torch.load(path, map_location="cpu", weights_only=True)
        x = blob.get("features", blob.get("x")) if isinstance(blob, dict) else blob
        return torch.as_tensor(x, dtype=torch.float32)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    try:
        numeric = [[float(v) for v in r] for r in rows[1:] if r]
        return torch.tensor(numeric, dtype=torch.float32)
    except ValueError:
        raise DataFormatError(f"{path}: feature rows must be numbers (a header line, then one row per sample; "
                              "drop the label column)") from None


def main(argv: list[str]) -> int:
    """Classify files with a saved model; one CSV line (input, label, probability) per sample."""
    ap = argparse.ArgumentParser(prog="python -m encrypted_torch.client predict", description=__doc__)
    ap.add_argument("--model", type=Path, required=True, help="OUTPUT/model.pt written after training")
    ap.add_argument("inputs", nargs="*", help="image files or folders, text files, or feature files")
    ap.add_argument("--text", action="append", help="a text to classify (repeatable)")
    ap.add_argument("--json", action="store_true", help="print JSON lines instead of CSV")
    args = ap.parse_args(argv)
    try:
        clf = Classifier.load(args.model)
        x, names = clf.features(args.inputs, args.text)
        probs = clf.predict_proba(x)
    except EncTorchError as err:
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    conf, idx = probs.max(1)
    writer = csv.writer(sys.stdout)
    if not args.json:
        writer.writerow(["input", "label", "probability"])
    for name, i, p in zip(names, idx.tolist(), conf.tolist(), strict=True):
        if args.json:
            print(json.dumps({"input": name, "label": clf.classes[i], "probability": round(p, 4)}))
        else:
            writer.writerow([name, clf.classes[i], f"{p:.4f}"])
    return 0
