"""Operation counters: every backend op is counted, so algorithms can assert their op counts."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass, fields


@dataclass
class OpCounts:
    """How many of each homomorphic operation ran (rotations count key switches)."""

    rotations: int = 0
    conjugations: int = 0
    ct_ct_mults: int = 0
    ct_pt_mults: int = 0
    relinearizations: int = 0
    rescales: int = 0
    mod_switches: int = 0
    additions: int = 0
    encryptions: int = 0
    scale_alignments: int = 0
    refreshes: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __add__(self, other: OpCounts) -> OpCounts:
        return OpCounts(**{k: v + getattr(other, k) for k, v in self.as_dict().items()})

    def __sub__(self, other: OpCounts) -> OpCounts:
        return OpCounts(**{k: v - getattr(other, k) for k, v in self.as_dict().items()})


_active: contextvars.ContextVar[tuple[OpCounts, ...]] = contextvars.ContextVar(
    "encrypted_torch_op_counters", default=()
)


def record(name: str, n: int = 1) -> None:
    """Add ``n`` to counter ``name`` of every active ``count_ops`` block."""
    for counts in _active.get():
        setattr(counts, name, getattr(counts, name) + n)


@contextlib.contextmanager
def count_ops() -> Iterator[OpCounts]:
    """Count the homomorphic operations run inside the block (blocks nest).

    >>> with count_ops() as ops:
    ...     pass
    >>> ops.rotations
    0
    """
    counts = OpCounts()
    token = _active.set(_active.get() + (counts,))
    try:
        yield counts
    finally:
        _active.reset(token)
