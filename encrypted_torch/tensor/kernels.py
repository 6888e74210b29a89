"""Block-wise kernels on EncTensor blocks: the homomorphic work behind the elementwise ops and sums.

Kernels take and return block grids (lists of lists of Cipher) plus layouts; the autograd ops in
``ops.py`` call them. Every kernel keeps the invariant that padding slots hold zero.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..ckks.evaluator import Cipher, Evaluator
from ..errors import ShapeError
from .layout import BlockLayout

Blocks = list[list[Cipher]]


def plain_blocks(layout: BlockLayout, value: Any) -> np.ndarray:
    """A plaintext operand (tensor, array or scalar) broadcast to the layout and packed."""
    if isinstance(value, torch.Tensor):
        arr = value.detach().to(torch.float64).cpu().numpy()
    else:
        arr = np.asarray(value, dtype=np.float64)
    if arr.ndim > 2:
        raise ShapeError(f"an EncTensor is 2-D; cannot combine it with a {arr.ndim}-D operand")
    try:
        arr = np.broadcast_to(arr, layout.shape)
    except ValueError:
        raise ShapeError(f"operand of shape {arr.shape} does not broadcast to {layout.shape}") from None
    if not np.all(np.isfinite(arr)):
        raise ShapeError("plaintext operand holds NaN or inf")
    return layout.pack(arr)


def map_blocks(blocks: Blocks, fn: Any) -> Blocks:
    return [[fn(c, i, j) for j, c in enumerate(row)] for i, row in enumerate(blocks)]


def zip_blocks(a: Blocks, b: Blocks, fn: Any) -> Blocks:
    return [[fn(x, y) for x, y in zip(ra, rb, strict=True)] for ra, rb in zip(a, b, strict=True)]


def add_plain(ev: Evaluator, blocks: Blocks, packed: np.ndarray, sign: float = 1.0) -> Blocks:
    return map_blocks(blocks, lambda c, i, j: ev.add_plain(c, sign * packed[i, j]))


def mul_plain(ev: Evaluator, blocks: Blocks, packed: np.ndarray) -> Blocks:
    return map_blocks(blocks, lambda c, i, j: ev.mul_plain(c, packed[i, j]))


def mul_scalar(ev: Evaluator, blocks: Blocks, x: float) -> Blocks:
    return map_blocks(blocks, lambda c, i, j: ev.mul_plain(c, float(x)))


def _grid_only(layout: BlockLayout, op: str) -> None:
    if layout.tiling != "grid":
        raise ShapeError(f"{op} works on grid layouts; this tensor is {layout.tiling}ly tiled")


def sum_dim(ev: Evaluator, blocks: Blocks, layout: BlockLayout, dim: int) -> tuple[Blocks, BlockLayout]:
    """Sum over rows (dim=0) or columns (dim=1), keeping the dim: log2(s) rotations, 1 level."""
    _grid_only(layout, "sum")
    rows, cols = layout.shape
    s0, s1 = layout.unit
    if dim == 1:
        out_layout = layout.with_shape((rows, 1))
        steps = [1 << k for k in range(s1.bit_length() - 1)]
        groups = [list(row) for row in blocks]
    elif dim == 0:
        out_layout = layout.with_shape((1, cols))
        steps = [(1 << k) * s1 for k in range(s0.bit_length() - 1)]
        groups = [list(col) for col in zip(*blocks, strict=True)]
    else:
        raise ShapeError(f"dim must be 0 or 1 for a 2-D EncTensor, got {dim}")
    mask = out_layout.valid_mask()
    out = []
    for g, group in enumerate(groups):
        z = group[0]
        for c in group[1:]:
            z = ev.add(z, c)
        for step in steps:  # after the folds, column 0 (dim=1) or every row (dim=0) holds the sum
            z = ev.add(z, ev.rotate(z, step))
        out.append(ev.mul_plain(z, mask[g, 0] if dim == 1 else mask[0, g]))
    if dim == 1:
        return [[z] for z in out], out_layout
    return [out], out_layout


def expand_dim(ev: Evaluator, blocks: Blocks, layout: BlockLayout, shape: tuple[int, int]) -> Blocks:
    """Broadcast a (rows, 1) or (1, cols) tensor to ``shape`` (backward of ``sum``): 1 level."""
    _grid_only(layout, "expand")
    target = layout.with_shape(shape)
    s0, s1 = layout.unit
    mask = target.valid_mask()
    n_a, n_b = target.grid
    if layout.shape == (shape[0], 1):
        steps = [-(1 << k) for k in range(s1.bit_length() - 1)]
        spread = []
        for row in blocks:
            z = row[0]
            for step in steps:
                z = ev.add(z, ev.rotate(z, step))
            spread.append(z)
        return [[ev.mul_plain(spread[i], mask[i, j]) for j in range(n_b)] for i in range(n_a)]
    if layout.shape == (1, shape[1]):
        steps = [-(1 << k) * s1 for k in range(s0.bit_length() - 1)]
        spread = []
        for z in blocks[0]:
            for step in steps:
                z = ev.add(z, ev.rotate(z, step))
            spread.append(z)
        return [[ev.mul_plain(spread[j], mask[i, j]) for j in range(n_b)] for i in range(n_a)]
    raise ShapeError(f"cannot expand {layout.shape} to {shape}")
