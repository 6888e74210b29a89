"""Checks, level preparation and slot masks shared by DiagABT and DiagATB (HETAL.md §2-§3)."""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import Any

import numpy as np

from ..ckks.evaluator import Cipher, Evaluator
from ..ckks.galois import compose_rotation
from ..errors import ContextMismatchError, DepthError, ShapeError
from ..parallel import fork_map, split, worker_count
from ..refresh import ensure_levels, level_policy
from ..tensor.base import TensorBase

Blocks = list[list[Cipher]]


def is_enc(x: Any) -> bool:
    return isinstance(x, TensorBase)


def require_tiling(x: Any, tiling: str, op: str, role: str) -> None:
    if not is_enc(x):
        raise TypeError(f"{op}: {role} must be an EncTensor, got {type(x).__name__}")
    if x.layout.tiling != tiling:
        raise ShapeError(f"{op}: {role} must be {tiling}ly tiled, got a {x.layout.describe()} "
                         f"tensor of shape {tuple(x.shape)}")


def require_same_keys(a: Any, b: Any, op: str) -> None:
    if a.ctx.fingerprint != b.ctx.fingerprint:
        raise ContextMismatchError(f"{op}: operands were encrypted under different keys")


def require_same_unit(a: Any, b: Any, op: str) -> None:
    if a.layout.unit != b.layout.unit:
        raise ShapeError(f"{op}: unit shapes differ: {tuple(a.shape)} in {a.layout.unit} blocks vs "
                         f"{tuple(b.shape)} in {b.layout.unit} blocks; encrypt both with the same unit")


def require_rotations(ctx: Any, steps: Iterable[int], op: str) -> None:
    """Raise MissingRotationKeyError now, before any SEAL call, if a step cannot be composed."""
    have = ctx.rotation_steps
    for s in steps:
        compose_rotation(s, have, ctx.slots)


def planned_level(x: Any, need: int, top: int) -> int:
    """The level ``x`` will have when the product starts: the top if it is short and a Refresher is
    active (it will be refreshed), else its own."""
    return top if x.level < need and level_policy().refreshes else x.level


def check_levels(op: str, *operands: tuple[str, Any, int]) -> None:
    """DepthError before any SEAL call if an operand (role, tensor, levels needed) is short and no
    Refresher is active; with one active, ``prepare`` refreshes it instead."""
    if level_policy().refreshes:
        return
    for role, x, need in operands:
        if x.level < need:
            raise DepthError(f"{op} on {role}", need, x.level)


def prepare(ev: Evaluator, x: Any, level: int, op: str) -> Blocks:
    """``x``'s blocks at exactly ``level``: refreshed if short (active Refresher), else mod-switched down.

    Rotations cost several times less at a low level (HETAL.md §3.4), so every operand is brought
    to the lowest level the product needs before the first rotation.
    """
    flat = ensure_levels(x.ciphers(), level, op, back_at=level)  # a refresh need not come back higher
    flat = [ev.mod_switch(c, level) for c in flat]
    n_b = x.layout.grid[1]
    return [flat[i : i + n_b] for i in range(0, len(flat), n_b)]


def log2(n: int) -> int:
    return n.bit_length() - 1


@lru_cache(maxsize=64)
def _rows_cols(unit: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    s0, s1 = unit
    idx = np.arange(s0 * s1)
    return idx // s1, idx % s1


def row_index(unit: tuple[int, int]) -> np.ndarray:
    return _rows_cols(unit)[0]


def col_index(unit: tuple[int, int]) -> np.ndarray:
    return _rows_cols(unit)[1]


def column_mask(unit: tuple[int, int], keep_below: int) -> np.ndarray:
    """1 at columns t < keep_below of every row: the row-local rotation masks of Algorithms 3-4."""
    return (col_index(unit) < keep_below).astype(np.float64)


def diagonal_mask(unit: tuple[int, int], c_pad: int, k: int, rows_ahead: bool) -> np.ndarray:
    """M_k[r,t] = [t ≡ r+k] (DiagABT, ``rows_ahead=False``) or N_k[r,t] = [r ≡ t+k] (DiagATB)."""
    r, t = _rows_cols(unit)
    if rows_ahead:
        return ((r - t - k) % c_pad == 0).astype(np.float64)
    return ((t - r - k) % c_pad == 0).astype(np.float64)


def sum_over_diagonals(ctx: Any, diagonals: Iterable[int], n_out: int, partial: Any, work: int,
                       width: int = 1) -> list[Cipher]:
    """Σ over ``diagonals`` of each diagonal's terms, one per output block, split over worker processes.

    ``partial(share)`` gets a list of (diagonal, output blocks) and returns the partial sums of the
    blocks it touched, in block order. With at least as many diagonals as workers the split is by
    diagonal (each worker all blocks of its diagonals); with fewer (one diagonal when c_pad ≤ 2) it is
    by (diagonal, block), so that every core still gets work. Each diagonal's rotations and products
    are independent of the others', so a split by diagonal repeats no op, and the joining additions
    are the ones a serial sum does: counts and results (exact mod q) do not depend on the worker
    count. A diagonal whose blocks are split between workers repeats its shift in each (none for
    diagonal 0). ``width``: ``partial`` returns that many ciphers per block (block-major), and so
    does the result.
    """
    ev = ctx.evaluator
    ks, blocks = list(diagonals), list(range(n_out))
    n = worker_count(work)
    if len(ks) >= n:
        shares = [[(k, blocks) for k in run] for run in split(ks, n)]
    else:
        shares = [_group(run) for run in split([(k, b) for k in ks for b in blocks], n)]
    parts = fork_map(ctx, partial, shares)
    total: list[Cipher | None] = [None] * (n_out * width)
    for share, part in zip(shares, parts, strict=True):
        touched = sorted({b for _, bs in share for b in bs})
        for s, c in zip([b * width + w for b in touched for w in range(width)], part, strict=True):
            total[s] = c if total[s] is None else ev.add(total[s], c)
    return total


def _group(pairs: list[tuple[int, int]]) -> list[tuple[int, list[int]]]:
    """[(k, b), ...] → [(k, [b, ...]), ...], keeping the order."""
    out: list[tuple[int, list[int]]] = []
    for k, b in pairs:
        if out and out[-1][0] == k:
            out[-1][1].append(b)
        else:
            out.append((k, [b]))
    return out
