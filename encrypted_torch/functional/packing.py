"""Softmax on fewer ciphertexts: the g = s1/c_pad copies of a horizontal tiling replaced by g block rows.

A horizontally tiled block holds each of its s0 rows g times, one copy per tile of c_pad columns,
and the softmax works tile by tile. So g block rows can share one ciphertext, tile q holding block
row g·i + q, and the softmax runs on ⌈n_a/g⌉ ciphertexts instead of n_a. Packing costs a mask per
block row (1 level, no rotation); unpacking a mask per block row and 1 + log2 g rotations to copy
the tile back to every tile (within its row).

The packed ciphertexts are a horizontal layout of unit (s0·s1/c_pad, c_pad) with permuted rows:
slot r·s1 + q·c_pad + class of packed block i holds batch row (g·i + q)·s0 + r. ``packed_masks`` gives the softmax its
slot masks in that order.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from ..ckks.evaluator import Cipher, Evaluator
from ..refresh import ensure_levels
from ..tensor.layout import BlockLayout


def copies(layout: BlockLayout) -> int:
    """How many block rows share a ciphertext: g = s1/c_pad tiles, no more than there are block rows."""
    return min(layout.s1 // layout.c_pad, layout.grid[0])


def packed_layout(layout: BlockLayout) -> BlockLayout:
    """The layout the softmax sees: unit (s0·s1/c_pad, c_pad), one block per packed ciphertext."""
    tiles = layout.s1 // layout.c_pad
    n_packed = -(-layout.grid[0] // copies(layout))
    return BlockLayout((n_packed * layout.s0 * tiles, layout.shape[1]), (layout.s0 * tiles, layout.c_pad),
                       "horizontal")


def _tile(layout: BlockLayout) -> np.ndarray:
    return (np.arange(layout.slots) % layout.s1) // layout.c_pad


@lru_cache(maxsize=32)
def packed_masks(layout: BlockLayout) -> dict[str, np.ndarray]:
    """The softmax's slot masks (see softmax_core.slot_masks) for ``layout``'s packed ciphertexts."""
    rows, c = layout.shape
    s0, s1 = layout.unit
    c_pad, g = layout.c_pad, copies(layout)
    n_packed = packed_layout(layout).grid[0]
    slot = np.arange(layout.slots)
    r, q, col = slot // s1, _tile(layout), slot % c_pad
    batch_row = (g * np.arange(n_packed)[:, None] + q[None, :]) * s0 + r[None, :]
    in_group = (q[None, :] < g) & (g * np.arange(n_packed)[:, None] + q[None, :] < layout.grid[0])
    # tiles q ≥ g (fewer block rows than tiles) hold nothing: invalid rows, like padding
    row_valid = ((batch_row < rows) & in_group).astype(float)
    shape = (n_packed, layout.slots)
    return {
        "valid": row_valid * (col < c),
        "row_valid": row_valid,
        "class_pad": np.broadcast_to((col >= c).astype(float), shape),
        "tile0": np.broadcast_to((col == 0).astype(float), shape),
        "good": np.broadcast_to((col == 0).astype(float), shape),
    }


def pack(ev: Evaluator, ciphers: Sequence[Cipher], layout: BlockLayout, op: str) -> list[Cipher]:
    """g block rows per ciphertext (tile q of packed block i = tile q of block row g·i + q): 1 level."""
    g = copies(layout)
    tile = _tile(layout)
    ciphers = ensure_levels(list(ciphers), 1, op)
    out = []
    for start in range(0, len(ciphers), g):
        terms = [ev.mul_plain(c, (tile == q).astype(float)) for q, c in enumerate(ciphers[start:start + g])]
        acc = terms[0]
        for t in terms[1:]:
            acc = ev.add(acc, t)
        out.append(acc)
    return out


def unpack(ev: Evaluator, packed: Sequence[Cipher], layout: BlockLayout, op: str) -> list[Cipher]:
    """The n_a block rows back in the horizontal tiling (tile q copied to every tile of its row): 1 level."""
    g, n_a, c_pad = copies(layout), layout.grid[0], layout.c_pad
    tile = _tile(layout)
    packed = ensure_levels(list(packed), 1, op)
    out = []
    for i in range(n_a):
        q = i % g
        x = ev.mul_plain(packed[i // g], (tile == q).astype(float), packed[i // g].scale)
        x = ev.rotate(x, q * c_pad)  # tile q → tile 0, within the row
        for e in range((layout.s1 // c_pad).bit_length() - 1):
            x = ev.add(x, ev.rotate(x, -(c_pad << e)))
        out.append(x)
    return out

