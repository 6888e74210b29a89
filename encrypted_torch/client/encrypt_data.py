"""Client side: shuffle, batch and encrypt features and one-hot labels in HETAL's layout."""

from __future__ import annotations

from typing import Any

import torch

from ..ckks.params import PRESETS, CKKSParams
from ..data.dataset import EncBatch, EncDataset
from ..errors import ShapeError
from ..tensor.enctensor import encrypt
from ..tensor.layout import BlockLayout, next_pow2
from ..training.unit_choice import choose_unit


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Float64 one-hot rows; labels must lie in [0, num_classes)."""
    labels = torch.as_tensor(labels, dtype=torch.int64)
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ShapeError(f"labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")
    return torch.nn.functional.one_hot(labels, num_classes).to(torch.float64)


def max_classes(params: CKKSParams) -> int:
    """The most classes a preset trains: HETAL's blocks hold the classes, padded to a power of two,
    both ways (c_pad² ≤ slots)."""
    c = 1
    while (2 * c) ** 2 <= params.slots:
        c *= 2
    return c


def check_classes_fit(num_classes: int, params: CKKSParams) -> None:
    """ShapeError naming a preset that fits when ``num_classes`` do not fit ``params``."""
    if num_classes <= max_classes(params):
        return
    fits = [p for p in sorted(PRESETS.values(), key=lambda p: p.slots) if max_classes(p) >= num_classes]
    fix = (f"create the key owner's context with SecretContext.create({fits[0].name!r}) (up to "
           f"{max_classes(fits[0])} classes)" if fits else "no preset holds that many; group the classes")
    raise ShapeError(f"{num_classes} classes (padded to {next_pow2(num_classes)}) do not fit preset "
                     f"{params.name!r}: its {params.slots} slots hold at most {max_classes(params)} classes; {fix}")


def _check_labels(labels: torch.Tensor, n: int) -> torch.Tensor:
    labels = torch.as_tensor(labels)
    if labels.ndim == 2 and labels.shape[0] == n:
        raise ShapeError(f"labels of shape {tuple(labels.shape)} look one-hot; pass class indices of shape "
                         f"({n},), as torch's cross_entropy takes them: labels.argmax(1)")
    if labels.ndim != 1:
        raise ShapeError(f"labels must be class indices of shape ({n},), got {tuple(labels.shape)}")
    if len(labels) != n:
        raise ShapeError(f"{n} feature rows but {len(labels)} labels")
    if labels.is_floating_point() and not torch.equal(labels, labels.round()):
        raise ShapeError("labels must be integer class indices, got fractional values")
    return labels


def encrypt_batches(features: torch.Tensor, labels: torch.Tensor | None, public_ctx: Any, *,
                    num_classes: int, batch_size: int, shuffle: bool = True, seed: int = 0,
                    name: str = "train", encrypt_labels: bool = True,
                    unit: tuple[int, int] | None = None) -> tuple[EncDataset, torch.Tensor]:
    """Encrypt a dataset; returns it and the sample order used (for the key owner's labels).

    ``unit``: the block shape (default: the cheapest for a training step, ``training.unit_choice``)."""
    features = torch.as_tensor(features).to(torch.float64)
    if features.ndim != 2:
        raise ShapeError(f"features must be (samples, features), got {tuple(features.shape)}")
    n = features.shape[0]
    if labels is not None:
        labels = _check_labels(labels, n)
    check_classes_fit(num_classes, public_ctx.params)
    if batch_size < 1:
        raise ShapeError(f"batch_size must be positive, got {batch_size}")
    if unit is None:
        unit = choose_unit(batch_size, features.shape[1] + 1, num_classes, public_ctx.params)
    elif unit[0] * unit[1] != public_ctx.slots:
        raise ShapeError(f"unit {tuple(unit)} has {unit[0] * unit[1]} slots; the context has {public_ctx.slots}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(n)
    batches = []
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        xb = features[idx]
        x = encrypt(xb, public_ctx, layout=BlockLayout(tuple(xb.shape), unit, "grid"))
        y = None
        if labels is not None and encrypt_labels:
            yb = one_hot(torch.as_tensor(labels)[idx], num_classes)
            y = encrypt(yb, public_ctx, layout=BlockLayout(tuple(yb.shape), unit, "horizontal"))
        batches.append(EncBatch(x, y, len(idx)))
    ds = EncDataset(batches, num_classes, features.shape[1], unit, name)
    return ds, order
