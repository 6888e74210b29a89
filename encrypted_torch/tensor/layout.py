"""HETAL's block layout: how a matrix is cut into s0×s1 blocks, one ciphertext each (HETAL.md §2).

Inside a block, entry (r, t) sits at slot r·s1 + t, so a shift by k rows is a rotation by k·s1.
Three tilings: ``grid`` (features X̄: an n_a×n_b block grid), ``vertical`` (weights W, c×f: the
c_pad padded rows repeat down each column block) and ``horizontal`` (logits, b×c: the c_pad
padded classes repeat along each row). Padding is always zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from einops import rearrange, repeat

from ..errors import ShapeError

TILINGS = ("grid", "vertical", "horizontal")


def next_pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, n))))


def unit_shape(batch: int, classes: int, slots: int) -> tuple[int, int]:
    """HETAL's unit-shape rule: s0 = min(max(b, c_pad), slots/c_pad), s1 = slots/s0."""
    c_pad = next_pow2(classes)
    if c_pad * c_pad > slots:
        raise ShapeError(f"{classes} classes need c_pad²={c_pad * c_pad} slots, only {slots}")
    s0 = min(next_pow2(max(batch, c_pad)), slots // c_pad)
    return s0, slots // s0


@dataclass(frozen=True)
class BlockLayout:
    """Where each entry of a (rows × cols) matrix lives in which ciphertext slot."""

    shape: tuple[int, int]
    unit: tuple[int, int]
    tiling: str = "grid"

    def __post_init__(self) -> None:
        rows, cols = self.shape
        s0, s1 = self.unit
        if rows < 1 or cols < 1:
            raise ShapeError(f"empty matrix shape {self.shape}")
        if s0 < 1 or s1 < 1 or s0 & (s0 - 1) or s1 & (s1 - 1):
            raise ShapeError(f"unit shape {self.unit} must be powers of two")
        if self.tiling not in TILINGS:
            raise ShapeError(f"unknown tiling {self.tiling!r}; one of {TILINGS}")
        if self.tiling == "vertical" and self.c_pad > s0:
            raise ShapeError(f"vertical tiling of {rows} rows needs s0 ≥ {self.c_pad}, got {s0}")
        if self.tiling == "horizontal" and self.c_pad > s1:
            raise ShapeError(f"horizontal tiling of {cols} columns needs s1 ≥ {self.c_pad}, got {s1}")

    @property
    def s0(self) -> int:
        return self.unit[0]

    @property
    def s1(self) -> int:
        return self.unit[1]

    @property
    def slots(self) -> int:
        return self.s0 * self.s1

    @property
    def c_pad(self) -> int:
        """Padded class count of a tiled layout (rows if vertical, columns if horizontal)."""
        if self.tiling == "vertical":
            return next_pow2(self.shape[0])
        if self.tiling == "horizontal":
            return next_pow2(self.shape[1])
        raise ShapeError("a grid layout has no class padding")

    @property
    def grid(self) -> tuple[int, int]:
        """(block rows n_a, block columns n_b)."""
        rows, cols = self.shape
        n_a = 1 if self.tiling == "vertical" else math.ceil(rows / self.s0)
        n_b = 1 if self.tiling == "horizontal" else math.ceil(cols / self.s1)
        return n_a, n_b

    def with_shape(self, shape: tuple[int, int], tiling: str | None = None) -> BlockLayout:
        return BlockLayout(shape, self.unit, tiling or self.tiling)

    def describe(self) -> str:
        n_a, n_b = self.grid
        return f"{self.tiling} {self.s0}×{self.s1} blocks, {n_a}×{n_b}"

    def _padded_shape(self) -> tuple[int, int]:
        n_a, n_b = self.grid
        if self.tiling == "vertical":
            return self.c_pad, n_b * self.s1
        if self.tiling == "horizontal":
            return n_a * self.s0, self.c_pad
        return n_a * self.s0, n_b * self.s1

    def pack(self, matrix: np.ndarray) -> np.ndarray:
        """Matrix of this layout's shape → slot vectors, shape (n_a, n_b, slots)."""
        matrix = np.asarray(matrix)
        if matrix.shape != self.shape:
            raise ShapeError(f"cannot pack a {matrix.shape} matrix into a {self.shape} layout")
        pr, pc = self._padded_shape()
        padded = np.zeros((pr, pc), dtype=matrix.dtype)
        padded[: self.shape[0], : self.shape[1]] = matrix
        s0, s1 = self.unit
        if self.tiling == "vertical":
            return repeat(padded, "c (nb s1) -> 1 nb (rep c s1)", s1=s1, rep=s0 // self.c_pad)
        if self.tiling == "horizontal":
            return repeat(padded, "(na s0) c -> na 1 (s0 rep c)", s0=s0, rep=s1 // self.c_pad)
        return rearrange(padded, "(na s0) (nb s1) -> na nb (s0 s1)", s0=s0, s1=s1)

    def unpack(self, blocks: np.ndarray) -> np.ndarray:
        """Slot vectors (n_a, n_b, slots) → the matrix (first tile of a tiled layout)."""
        blocks = np.asarray(blocks)
        if blocks.shape != (*self.grid, self.slots):
            raise ShapeError(f"expected blocks of shape {(*self.grid, self.slots)}, got {blocks.shape}")
        s0, s1 = self.unit
        if self.tiling == "vertical":
            full = rearrange(blocks, "1 nb (rep c s1) -> rep c (nb s1)", c=self.c_pad, s1=s1)[0]
        elif self.tiling == "horizontal":
            full = rearrange(blocks, "na 1 (s0 rep c) -> rep (na s0) c", s0=s0, c=self.c_pad)[0]
        else:
            full = rearrange(blocks, "na nb (s0 s1) -> (na s0) (nb s1)", s0=s0, s1=s1)
        return full[: self.shape[0], : self.shape[1]]

    def valid_mask(self) -> np.ndarray:
        """1 at every slot that holds (a copy of) an entry, 0 at padding; (n_a, n_b, slots)."""
        return self.pack(np.ones(self.shape))
