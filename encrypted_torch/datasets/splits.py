"""The train/val/test feature container every loader returns, and seeded stratified splitting."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["FeatureSplits", "Split", "stratified_partition"]

Split = tuple[torch.Tensor, torch.Tensor]
"""(features float32 (n, d), labels int64 (n,))."""


@dataclass(frozen=True, eq=False)
class FeatureSplits:
    """Plaintext features and labels for one dataset, split into train/val/test."""

    train: Split
    val: Split
    test: Split
    classes: list[str]
    name: str

    def __post_init__(self) -> None:
        dims = set()
        for part in ("train", "val", "test"):
            x, y = getattr(self, part)
            if x.dtype != torch.float32 or x.dim() != 2:
                raise ValueError(f"{self.name}.{part} features must be float32 (n, d), got "
                                 f"{x.dtype} {tuple(x.shape)}")
            if y.dtype != torch.int64 or y.shape != (x.shape[0],):
                raise ValueError(f"{self.name}.{part} labels must be int64 ({x.shape[0]},), got "
                                 f"{y.dtype} {tuple(y.shape)}")
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= len(self.classes)):
                top = len(self.classes) - 1
                raise ValueError(f"{self.name}.{part} labels fall outside 0..{top}")
            dims.add(x.shape[1])
        if len(dims) != 1:
            raise ValueError(f"{self.name}: train/val/test feature widths differ: {sorted(dims)}")

    @property
    def num_features(self) -> int:
        """Feature width d."""
        return int(self.train[0].shape[1])

    @property
    def num_classes(self) -> int:
        """Number of classes; labels are 0..num_classes-1 in the order of `classes`."""
        return len(self.classes)


def stratified_partition(
    labels: torch.Tensor, sizes: Sequence[int], seed: int = 0
) -> list[torch.Tensor]:
    """Split indices 0..n-1 into disjoint parts of the given sizes, each roughly stratified.

    Items are shuffled within their class, then the classes are interleaved in proportion to
    their counts, so every consecutive chunk (and every prefix of a chunk) keeps the class mix.
    Works for parts smaller than the number of classes, unlike sklearn's stratified split.
    """
    labels = torch.as_tensor(labels).reshape(-1)
    n = labels.numel()
    if any(s < 0 for s in sizes):
        raise ValueError(f"split sizes must be >= 0, got {list(sizes)}")
    if sum(sizes) > n:
        raise ValueError(f"split sizes {list(sizes)} add up to {sum(sizes)} > {n} items")
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    jitter = torch.rand(n, generator=gen, dtype=torch.float64)
    key = torch.empty(n, dtype=torch.float64)
    shuffled_labels = labels[perm]
    for cls in torch.unique(labels):
        pos = (shuffled_labels == cls).nonzero().reshape(-1)
        key[pos] = (torch.arange(pos.numel(), dtype=torch.float64) + jitter[pos]) / pos.numel()
    order = perm[torch.argsort(key, stable=True)]
    parts, start = [], 0
    for size in sizes:
        parts.append(order[start:start + size].clone())
        start += size
    return parts
