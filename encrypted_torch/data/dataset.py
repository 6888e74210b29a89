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


@dataclass(frozen=True)
class KeptLabels:
    """A training batch's labels that stayed with the key owner (``keep_labels=True``): which set,
    which batch of it, how many rows. The exact-softmax loss sends it with the batch's logits."""

    dataset: str
    index: int
    rows: int


@dataclass
class EncBatch:
    """One minibatch: encrypted features ``x`` (rows × features), labels ``y`` (rows × classes);
    ``index`` (its place in ``dataset``) names its labels when they stayed with the key owner."""

    x: EncTensor
    y: EncTensor | None
    rows: int
    index: int = -1
    dataset: str = ""

    def __iter__(self) -> Iterator[EncTensor | None]:
        return iter((self.x, self.y))

    @property
    def kept_labels(self) -> KeptLabels | None:
        """The reference to this batch's labels at the key owner, if it has no encrypted ones."""
        if self.y is not None or self.index < 0:
            return None
        return KeptLabels(self.dataset, self.index, self.rows)


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
        if isinstance(self.batches, list):  # in memory: each batch learns its place (disk sets load it)
            for i, b in enumerate(self.batches):
                if b.index < 0:
                    b.index, b.dataset = i, self.name

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
