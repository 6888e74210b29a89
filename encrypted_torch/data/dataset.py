"""Encrypted datasets: batches of features (grid layout) and one-hot labels (horizontal layout).

The server holds these and iterates them; it may reshuffle the batch order each epoch.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import ShapeError
from ..tensor.enctensor import EncTensor


@dataclass
class EncBatch:
    """One minibatch: encrypted features ``x`` (rows × features), labels ``y`` (rows × classes)."""

    x: EncTensor
    y: EncTensor | None
    rows: int

    def __iter__(self) -> Iterator[EncTensor | None]:
        return iter((self.x, self.y))


class BatchedRows:
    """What a sequence of batches (``.rows``, ``.y`` None when the labels stay with the key owner) tells:
    shared by encrypted datasets and their on-disk manifests."""

    batches: Any

    @property
    def num_samples(self) -> int:
        return sum(b.rows for b in self.batches)

    @property
    def has_labels(self) -> bool:
        return all(b.y is not None for b in self.batches)


@dataclass
class EncDataset(BatchedRows):
    """Encrypted batches sharing one unit shape. ``name`` ties a validation set to the labels its
    key owner kept (``y`` is None then)."""

    batches: list[EncBatch]
    num_classes: int
    num_features: int
    unit: tuple[int, int]
    name: str = "train"
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.batches:
            raise ShapeError("an EncDataset needs at least one batch")

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[EncBatch]:
        return iter(self.batches)

    def __getitem__(self, i: int) -> EncBatch:
        """The i-th batch, so ``torch.utils.data.DataLoader(ds, batch_size=None, shuffle=True)`` works."""
        return self.batches[i]


class DataLoader:
    """Iterates an EncDataset's batches, optionally in a new order each epoch (server-side shuffle).

    Batches are fixed by the client (samples were shuffled before encryption); the server
    can only permute whole batches.
    """

    def __init__(self, dataset: EncDataset, shuffle: bool = True, seed: int = 0) -> None:
        self.dataset, self.shuffle = dataset, shuffle
        self._rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[EncBatch]:
        order = list(range(len(self.dataset)))
        if self.shuffle:
            self._rng.shuffle(order)
        return (self.dataset.batches[i] for i in order)

    def rng_state(self) -> object:
        return self._rng.getstate()

    def set_rng_state(self, state: object) -> None:
        self._rng.setstate(state)
