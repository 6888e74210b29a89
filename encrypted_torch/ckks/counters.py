"""Operation counters: every backend op is counted, so algorithms can assert their op counts."""

from __future__ import annotations

import contextlib
import contextvars
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, fields


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
    by_level: Counter = field(default_factory=Counter, repr=False, compare=False)
    """(op name, operand level) → count; the level is None where an op has no operand level."""

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "by_level"}

    def __add__(self, other: OpCounts) -> OpCounts:
        return OpCounts(**{k: v + getattr(other, k) for k, v in self.as_dict().items()},
                        by_level=self.by_level + other.by_level)

    def __sub__(self, other: OpCounts) -> OpCounts:
        diff = Counter(self.by_level)
        diff.subtract(other.by_level)
        return OpCounts(**{k: v - getattr(other, k) for k, v in self.as_dict().items()},
                        by_level=Counter({k: v for k, v in diff.items() if v}))

    def add_(self, other: OpCounts) -> None:
        """Add ``other`` in place (counts a worker process ran on this one's behalf)."""
        for k, v in other.as_dict().items():
            setattr(self, k, getattr(self, k) + v)
        self.by_level.update(other.by_level)


_active: contextvars.ContextVar[tuple[OpCounts, ...]] = contextvars.ContextVar(
    "encrypted_torch_op_counters", default=()
)


def record(name: str, n: int = 1, level: int | None = None) -> None:
    """Add ``n`` to counter ``name`` (and to its ``level`` split) of every active ``count_ops`` block."""
    for counts in _active.get():
        setattr(counts, name, getattr(counts, name) + n)
        counts.by_level[(name, level)] += n


def active() -> tuple[OpCounts, ...]:
    """The open ``count_ops`` blocks, innermost last."""
    return _active.get()


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
