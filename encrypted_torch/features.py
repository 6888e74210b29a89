"""Client-side feature extraction: run a frozen plaintext backbone once, cache the result on disk.

HETAL-style training only fits the last layer under encryption, so the client pushes its data
through a pretrained model in the clear first; this module does that in batches and caches the
(n, d) float32 features keyed by a fingerprint of the model weights and the inputs.
"""

from __future__ import annotations

import hashlib
import os
import sys
import uuid
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from tqdm import tqdm

__all__ = ["default_cache_dir", "extract", "fingerprint"]

Inputs = torch.Tensor | Sequence[Any] | Dataset

_CACHE_FORMAT = "encrypted_torch.features/v1"


def default_cache_dir() -> Path:
    """Where the dataset loaders keep extracted features unless told otherwise."""
    return Path("~/.cache/encrypted_torch").expanduser()


def _num_items(inputs: Inputs) -> int:
    if isinstance(inputs, torch.Tensor):
        if inputs.dim() == 0:
            raise ValueError("inputs must have a leading batch dimension, got a 0-d tensor")
        return int(inputs.shape[0])
    try:
        return len(inputs)  # type: ignore[arg-type]
    except TypeError as exc:
        raise TypeError(
            f"inputs must be a Tensor or a sized Sequence/Dataset, got {type(inputs).__name__}"
        ) from exc


def _as_item(item: Any, index: int) -> torch.Tensor:
    try:
        return torch.as_tensor(item)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(
            f"input item {index} ({type(item).__name__}) cannot be turned into a tensor"
        ) from exc


def _batches(inputs: Inputs, n: int, batch_size: int) -> Iterator[torch.Tensor]:
    """Yield consecutive batches; items of a Sequence/Dataset are stacked like a DataLoader."""
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        if isinstance(inputs, torch.Tensor):
            yield inputs[start:stop]
            continue
        items = [_as_item(inputs[i], i) for i in range(start, stop)]
        try:
            yield torch.stack(items)
        except RuntimeError as exc:
            raise ValueError(
                f"input items {start}..{stop - 1} do not stack (different shapes?): {exc}"
            ) from exc


def _tensor_bytes(t: torch.Tensor) -> bytes:
    flat = t.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def _hash_tensor(h: Any, t: torch.Tensor) -> None:
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(_tensor_bytes(t))


def fingerprint(model: torch.nn.Module, inputs: Inputs, batch_size: int = 1024) -> str:
    """sha256 over the model's class and state_dict and the inputs' shape and content.

    Parameter-free preprocessing that matters (image size, normalisation) should live in
    buffers so that it reaches the state_dict and hence the fingerprint.
    """
    h = hashlib.sha256(_CACHE_FORMAT.encode())
    cls = type(model)
    h.update(f"model:{cls.__module__}.{cls.__qualname__}".encode())
    for key, value in model.state_dict().items():
        h.update(f"|{key}:".encode())
        if isinstance(value, torch.Tensor):
            _hash_tensor(h, value)
        else:
            h.update(repr(value).encode())
    n = _num_items(inputs)
    h.update(f"|inputs:{n}".encode())
    for batch in _batches(inputs, n, batch_size):
        _hash_tensor(h, batch)
    return h.hexdigest()


def _load_cache(path: Path, key: str) -> torch.Tensor | None:
    """Return the cached features if the file exists and holds this fingerprint."""
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a torn or foreign file: recompute rather than fail
        warnings.warn(f"ignoring unreadable feature cache {path}: {exc}", stacklevel=3)
        return None
    if not isinstance(blob, dict) or blob.get("format") != _CACHE_FORMAT:
        return None
    features = blob.get("features")
    if blob.get("fingerprint") != key or not isinstance(features, torch.Tensor):
        return None
    return features


def _save_cache(path: Path, key: str, features: torch.Tensor) -> None:
    """Write atomically (temp file in the same directory + os.replace): no torn caches."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # a unique name (not mkstemp, whose 0600 mode would ignore the umask) in the same directory
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        blob = {"format": _CACHE_FORMAT, "fingerprint": key, "features": features}
        torch.save(blob, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _run(
    model: torch.nn.Module,
    inputs: Inputs,
    n: int,
    batch_size: int,
    device: str | torch.device,
    progress: bool,
) -> torch.Tensor:
    was_training = model.training
    model.eval()
    model.to(device)
    show = progress and sys.stderr.isatty()
    chunks: list[torch.Tensor] = []
    try:
        with torch.no_grad(), tqdm(total=n, unit="item", desc="features", disable=not show) as bar:
            for batch in _batches(inputs, n, batch_size):
                out = model(batch.to(device))
                if not isinstance(out, torch.Tensor):
                    raise TypeError(f"model must return a Tensor, got {type(out).__name__}")
                if out.dim() == 0 or out.shape[0] != batch.shape[0]:
                    raise ValueError(
                        f"model output shape {tuple(out.shape)} does not keep the batch "
                        f"dimension of its input {tuple(batch.shape)}"
                    )
                chunks.append(out.reshape(out.shape[0], -1).to("cpu", torch.float32))
                bar.update(batch.shape[0])
    finally:
        model.train(was_training)
    return torch.cat(chunks)


def extract(
    model: torch.nn.Module,
    inputs: Inputs,
    batch_size: int = 64,
    cache: str | Path | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> torch.Tensor:
    """Run `model` (eval mode, no grad) over `inputs` in batches; return (n, d) float32 on CPU.

    `inputs` is a Tensor whose first dim indexes items, or a Sequence/Dataset of tensor-like
    items that `torch.stack` can batch. Outputs are flattened per item. With `cache`, the result
    is stored in that .pt file and reused while the fingerprint (model state_dict + inputs)
    matches; otherwise it is recomputed and the file overwritten. The model is moved to
    `device` and left there; its train/eval mode is restored.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = _num_items(inputs)
    if n == 0:
        raise ValueError("inputs is empty: nothing to extract features from")
    key = None
    path = Path(cache) if cache is not None else None
    if path is not None:
        key = fingerprint(model, inputs)
        cached = _load_cache(path, key)
        if cached is not None:
            return cached
    features = _run(model, inputs, n, batch_size, device, progress)
    if path is not None and key is not None:
        _save_cache(path, key, features)
    return features
