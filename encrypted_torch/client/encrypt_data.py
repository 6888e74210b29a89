"""Client side: shuffle, batch and encrypt features and one-hot labels in HETAL's layout.

``encrypt_batches`` encrypts a whole dataset in memory; ``encrypt_to_disk`` encrypts batches one
at a time into a dataset directory (``storage.dataset``), so memory holds one batch whatever the
row count, and ``encrypt_dataset_to_disk`` does the same for a ``KeyOwner``, keeping the
validation labels with it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from ..ckks.params import PRESETS, CKKSParams
from ..data.dataset import EncBatch, EncDataset
from ..errors import ShapeError
from ..storage.dataset import DatasetWriter, Manifest
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

    ``public_ctx``: the public context, or the key owner's SecretContext, which encrypts with the secret
    key in SEAL's seeded form (half the bytes to save and upload). ``unit``: the block shape (default:
    the cheapest for a training step, ``training.unit_choice``)."""
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
        x = encrypt(xb, public_ctx, layout=BlockLayout(tuple(xb.shape), unit, "grid"), seeded=True)
        y = None
        if labels is not None and encrypt_labels:
            yb = one_hot(torch.as_tensor(labels)[idx], num_classes)
            y = encrypt(yb, public_ctx, layout=BlockLayout(tuple(yb.shape), unit, "horizontal"), seeded=True)
        batches.append(EncBatch(x, y, len(idx)))
    ds = EncDataset(batches, num_classes, features.shape[1], unit, name)
    return ds, order


def encrypt_to_disk(batches: Iterable[tuple[torch.Tensor, torch.Tensor | None]], directory: str | Path,
                    public_ctx: Any, *, num_classes: int, unit: tuple[int, int] | None = None,
                    name: str = "train", encrypt_labels: bool = True) -> Manifest:
    """Encrypt ``(features, labels)`` batches one at a time into a dataset directory; returns its manifest.

    Memory holds one batch (its rows, ciphertexts and their bytes), never the dataset, so a
    dataset of any size is encrypted on a laptop. Batches are written in the order given (shuffle
    the rows before, as ``encrypt_batches`` does). ``encrypt_labels=False`` (validation): the
    labels are not encrypted and may be None. ``unit``: default ``choose_unit``'s for the first
    batch. ``public_ctx`` may be the key owner's SecretContext: secret-key encryptions in SEAL's
    seeded form, half the bytes on disk and on the wire (``encrypt_dataset_to_disk`` does this).
    The manifest is written last, so a failure part way leaves no usable directory.

    >>> m = encrypt_to_disk(((x[i:i + 1024], y[i:i + 1024]) for i in range(0, len(x), 1024)),
    ...                     "data/train", owner.public_context, num_classes=10)   # doctest: +SKIP
    """
    check_classes_fit(num_classes, public_ctx.params)
    writer: DatasetWriter | None = None
    num_features = 0
    for k, (xb, yb) in enumerate(batches):
        xb = torch.as_tensor(xb).to(torch.float64)
        if xb.ndim != 2 or xb.shape[0] == 0:
            raise ShapeError(f"batch {k}: features must be (rows, features) with rows > 0, got {tuple(xb.shape)}")
        if writer is None:
            num_features = xb.shape[1]
            if unit is None:
                unit = choose_unit(xb.shape[0], num_features + 1, num_classes, public_ctx.params)
            elif unit[0] * unit[1] != public_ctx.slots:
                raise ShapeError(f"unit {tuple(unit)} has {unit[0] * unit[1]} slots; the context has "
                                 f"{public_ctx.slots}")
            writer = DatasetWriter(directory, public_ctx, name=name, num_classes=num_classes,
                                   num_features=num_features, unit=unit)
        elif xb.shape[1] != num_features:
            raise ShapeError(f"batch {k} has {xb.shape[1]} features, batch 0 had {num_features}")
        assert unit is not None
        x = encrypt(xb, public_ctx, layout=BlockLayout(tuple(xb.shape), unit, "grid"), seeded=True)
        y = None
        if encrypt_labels:
            if yb is None:
                raise ShapeError(f"batch {k} has no labels; a training set needs them (encrypt_labels=False "
                                 "for a validation set whose labels the key owner keeps)")
            onehot = one_hot(_check_labels(yb, xb.shape[0]), num_classes)
            y = encrypt(onehot, public_ctx, layout=BlockLayout(tuple(onehot.shape), unit, "horizontal"), seeded=True)
        writer.add(x, y, xb.shape[0])
        del x, y  # only the writer's file entries outlive the batch
    if writer is None:
        raise ShapeError("no batches to encrypt: the iterable was empty")
    return writer.close()


def encrypt_dataset_to_disk(owner: Any, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                            directory: str | Path, *, num_classes: int, name: str = "train",
                            keep_labels: bool = False, unit: tuple[int, int] | None = None) -> Manifest:
    """``KeyOwner.encrypt_dataset``, streamed: ``encrypt_to_disk`` under the owner's keys and unit
    (``owner`` is a KeyOwner; key_owner imports this module, so it is not imported here).

    ``keep_labels=True`` (validation): the labels are not encrypted; the owner keeps them for
    dataset ``name`` in the order written (int64, 8 bytes a row), as ``encrypt_dataset`` does."""
    kept: list[torch.Tensor] = []

    def labelled() -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        for k, (xb, yb) in enumerate(batches):
            if keep_labels:
                if yb is None:
                    raise ShapeError(f"batch {k} has no labels for the key owner to keep")
                kept.append(_check_labels(yb, len(xb)).to(torch.int64))
            yield xb, yb

    manifest = encrypt_to_disk(labelled(), directory, owner.secret, num_classes=num_classes,
                               unit=unit or owner.unit, name=name, encrypt_labels=not keep_labels)
    owner.unit = owner.unit or manifest.unit
    owner.num_classes = num_classes
    if keep_labels:
        keep_validation_labels(owner, name, torch.cat(kept))
    return manifest


def keep_validation_labels(owner: Any, name: str, labels: torch.Tensor) -> None:
    """Give ``owner`` the labels of validation set ``name`` (in its rows' order), as
    ``encrypt_dataset(..., keep_labels=True)`` would; through its state_dict, which persists them."""
    state = owner.state_dict()
    state["val_labels"][name] = torch.as_tensor(labels, dtype=torch.int64).clone()
    owner.load_state_dict(state)
