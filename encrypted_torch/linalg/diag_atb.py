"""DiagATB (HETAL Algorithm 5, HETAL.md §3.2): C = Aᵀ·B for A horizontally tiled (batch × classes) and
B grid (batch × features); C comes out vertically tiled (classes × features), the weights' layout, so
a gradient adds to W with no repacking.

Diagonal k, E_k[t] = Σ_r A[r,(t+k) mod c_pad]·B[r,t] = C[(t+k) mod c_pad, t], is a row fold of
RotLeft(A, k) ⊙ B; diagonals k and k+h share a ciphertext as real and imaginary parts.

Two variants (the paper's): "mask_a" rotates A row-locally (RotLeft, 2 Rot + 1 CMult: 4 levels on A,
2 on B); "prot_up" rotates A plainly and moves B's wrapped columns up a row instead (PRotUp: 3 and 3).
``variant=None`` picks the one whose result keeps more levels, "mask_a" on a tie (fewer ops).

SEAL-specific (HETAL.md §3.4): ×i is folded into the packing's RotLeft masks (option b: iM and
i(1−M), one CMult more than the paper, no level); each block row is packed separately; PRotUp's
Rot(B, s1) does not depend on k, so it is computed once, not h−1 times.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..ckks.evaluator import Cipher, Evaluator
from ..errors import DepthError, ShapeError
from ..tensor.base import Blocks, TensorBase
from ..tensor.layout import BlockLayout, next_pow2
from . import _common as cm
from .steps import diag_atb_steps

VARIANTS = ("mask_a", "prot_up")

DEPTH = {"mask_a": (4, 2), "prot_up": (3, 3)}
"""(levels on A, levels on B) for c_pad ≥ 4; see ``levels_needed`` for c_pad ≤ 2."""


def levels_needed(variant: str, c_pad: int) -> tuple[int, int]:
    """(levels on A, levels on B): packing (1 on A if c_pad ≥ 2), the per-k mask (1 on A for
    "mask_a", on B for "prot_up", if there is a k ≥ 1), the Mult and the diagonal mask."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    pack = 1 if c_pad >= 2 else 0
    shift = 1 if c_pad >= 4 else 0
    if variant == "mask_a":
        return 2 + pack + shift, 2
    return 2 + pack, 2 + shift


def _check(a: Any, b: Any, op: str) -> None:
    cm.require_tiling(a, "horizontal", op, "A (batch × classes)")
    cm.require_tiling(b, "grid", op, "B (batch × features)")
    cm.require_same_keys(a, b, op)
    cm.require_same_unit(a, b, op)
    if a.shape[0] != b.shape[0]:
        raise ShapeError(f"{op}: Aᵀ·B needs the same batch: A {tuple(a.shape)}, B {tuple(b.shape)}")
    _check_out(a.layout, a.shape[1], op)


def _check_out(layout: BlockLayout, classes: int, op: str) -> None:
    if next_pow2(classes) > layout.s0:
        raise ShapeError(f"{op}: {classes} classes do not fit the vertical tiling of {layout.unit} blocks "
                         f"(s0={layout.s0})")


def choose_variant(level_a: int, level_b: int, c_pad: int, top: int, out_level: int | None = None) -> str:
    """The variant whose result keeps the most levels (or that reaches ``out_level`` with the fewest
    refreshes); "mask_a" on a tie. The paper: A above B → mask on A, A below B → PRotUp."""
    def out_of(v: str) -> int:
        na, nb = levels_needed(v, c_pad)
        return min(level_a - na, level_b - nb)

    fits = [v for v in VARIANTS if max(levels_needed(v, c_pad)) <= top]
    if not fits:
        raise DepthError("DiagATB (g.T @ x)", min(max(levels_needed(v, c_pad)) for v in VARIANTS), top,
                         "this preset has too few levels; pick a deeper preset")
    if out_level is None:
        return max(fits, key=lambda v: (out_of(v) >= 0, out_of(v), v == "mask_a"))
    reach = [v for v in fits if out_of(v) >= out_level]
    if reach:
        return "mask_a" if "mask_a" in reach else reach[0]

    def short(v: str) -> tuple[int, int]:  # operands to refresh: A is one column, B a whole grid
        na, nb = levels_needed(v, c_pad)
        return (int(level_a < out_level + na) + 10 * int(level_b < out_level + nb), v != "mask_a")

    return min(fits, key=short)


def _plan(a: Any, b: Any, c_pad: int, variant: str | None, out_level: int | None,
          op: str) -> tuple[str, int]:
    top = a.ctx.top_level
    if variant is None:
        variant = choose_variant(a.level, b.level, c_pad, top, out_level)
    need_a, need_b = levels_needed(variant, c_pad)
    if out_level is None:
        level_a, level_b = cm.planned_level(a, need_a, top), cm.planned_level(b, need_b, top)
        out_level = max(min(level_a - need_a, level_b - need_b), 0)
    if out_level < 0 or out_level + max(need_a, need_b) > top:
        raise DepthError(op, out_level + max(need_a, need_b), top,
                         f"a result at level {out_level} is out of this preset's reach")
    cm.check_levels(op, ("A", a, out_level + need_a), ("B", b, out_level + need_b))
    return variant, out_level


def _pack(ev: Evaluator, ai: Cipher, h: int, s1: int, unit: tuple[int, int]) -> Cipher:
    """Ã = A + i·RotLeft(A, h): ×i rides on the RotLeft masks (option b), so it costs no level.

    M⊙Rot(x, k) = Rot(Rot(M, −k)⊙x, k): masking first lets both rotations run one level lower.
    """
    keep = cm.column_mask(unit, s1 - h)
    x1 = ev.rotate(ev.mul_plain(ai, 1j * np.roll(keep, h), ai.scale), h)
    x2 = ev.rotate(ev.mul_plain(ai, 1j * np.roll(1.0 - keep, h - s1), ai.scale), h - s1)
    return ev.add(ev.mod_switch(ai, ai.level - 1), ev.add(x1, x2))


def diag_atb_blocks(a: TensorBase, b: TensorBase, *, out_scale: float = 1.0, out_level: int | None = None,
                    variant: str | None = None) -> tuple[Blocks, BlockLayout]:
    """The blocks and layout of C = out_scale · Aᵀ·B, vertically tiled; A horizontal (batch × c), B grid
    (batch × f), same unit. ``encrypted_torch.linalg.diag_atb`` wraps them in an EncTensor.

    ``out_scale`` (say 1/batch, or −lr/batch for an SGD step) rides on the diagonal mask: no level.
    The result is at ``out_level`` (default: the highest the operands allow).

    >>> blocks, layout = diag_atb_blocks(p_minus_y, x, out_scale=1 / 1024)     # doctest: +SKIP
    """
    op = "DiagATB (g.T @ x)"
    _check(a, b, op)
    c_pad = a.layout.c_pad
    variant, out = _plan(a, b, c_pad, variant, out_level, op)
    need_a, need_b = levels_needed(variant, c_pad)
    unit, s1 = a.layout.unit, a.layout.s1
    cm.require_rotations(a.ctx, diag_atb_steps(unit, c_pad, variant), op)
    ev = a.ctx.evaluator
    col_a = [row[0] for row in cm.prepare(ev, a, out + need_a, op)]
    grid_b = cm.prepare(ev, b, out + need_b, op)
    h = c_pad // 2
    packed = [_pack(ev, ai, h, s1, unit) for ai in col_a] if h else col_a
    mult_level = out + 2
    if variant == "mask_a":
        def a_k(k: int) -> list[Cipher]:
            if k == 0:
                return [ev.mod_switch(x, mult_level) for x in packed]
            keep = cm.column_mask(unit, s1 - k)
            out_k = []
            for x in packed:  # RotLeft = M⊙(Rot(x,k) − Rot(x,k−s1)) + Rot(x,k−s1): 2 Rot + 1 CMult
                x2 = ev.rotate(x, k - s1)
                out_k.append(ev.add(ev.mul_plain(ev.sub(ev.rotate(x, k), x2), keep, x.scale),
                                    ev.mod_switch(x2, mult_level)))
            return out_k

        def b_k(k: int) -> list[list[Cipher]]:
            return grid_b
    else:
        at_mult = [[ev.mod_switch(c, mult_level) for c in row] for row in grid_b]
        if h >= 2:
            # PRotUp(B,k) = M⊙B + (1−M)⊙Rot(B,s1) = M⊙(B − R) + R with R = Rot(B, s1) shared by all k.
            up = [[ev.rotate(c, s1) for c in row] for row in grid_b]
            diff = [[ev.sub(c, r) for c, r in zip(row, urow, strict=True)]
                    for row, urow in zip(grid_b, up, strict=True)]
            up = [[ev.mod_switch(r, mult_level) for r in row] for row in up]

        def a_k(k: int) -> list[Cipher]:
            return [ev.mod_switch(x, mult_level) if k == 0 else ev.rotate(x, k) for x in packed]

        def b_k(k: int) -> list[list[Cipher]]:
            if k == 0:
                return at_mult
            keep = cm.column_mask(unit, s1 - k)
            return [[ev.add(ev.mul_plain(d, keep, d.scale), r) for d, r in zip(drow, urow, strict=True)]
                    for drow, urow in zip(diff, up, strict=True)]

    return _accumulate(a, b.shape[1], a_k, b_k, h, out_scale, lambda x, y: ev.mul_raw(x, y), ev.finish)


def diag_atb_plain_blocks(a: TensorBase, b: Any, *, out_scale: float = 1.0,
                          out_level: int | None = None) -> tuple[Blocks, BlockLayout]:
    """The blocks and layout of C = out_scale · Aᵀ·B with B a plaintext (batch × f) matrix: the PRotUp
    variant with B's shifts and masks free (numpy) and Mults become CMults. 2 levels on A, plus 1 if c_pad ≥ 2.

    >>> blocks, layout = diag_atb_plain_blocks(g, x_plain)     # doctest: +SKIP
    """
    op = "DiagATB (g.T @ plaintext)"
    cm.require_tiling(a, "horizontal", op, "A (batch × classes)")
    b = np.asarray(b, dtype=np.float64)
    if b.ndim != 2 or b.shape[0] != a.shape[0]:
        raise ShapeError(f"{op}: Aᵀ·B needs B of shape ({a.shape[0]}, features); A {tuple(a.shape)}, "
                         f"B {tuple(b.shape)}")
    if not np.all(np.isfinite(b)):
        raise ShapeError(f"{op}: the plaintext operand holds NaN or inf")
    _check_out(a.layout, a.shape[1], op)
    c_pad = a.layout.c_pad
    need = levels_needed("prot_up", c_pad)[0]
    top = a.ctx.top_level
    out = max(cm.planned_level(a, need, top) - need, 0) if out_level is None else out_level
    if out < 0 or out + need > top:
        raise DepthError(op, out + need, top, f"a result at level {out} is out of this preset's reach")
    cm.check_levels(op, ("A", a, out + need))
    unit, s1 = a.layout.unit, a.layout.s1
    cm.require_rotations(a.ctx, diag_atb_steps(unit, c_pad, "plain"), op)
    ev = a.ctx.evaluator
    col_a = [row[0] for row in cm.prepare(ev, a, out + need, op)]
    grid_b = BlockLayout(b.shape, unit, "grid").pack(b)
    h = c_pad // 2
    packed = [_pack(ev, ai, h, s1, unit) for ai in col_a] if h else col_a
    delta = ev.params.scale

    def a_k(k: int) -> list[Cipher]:
        return packed if k == 0 else [ev.rotate(x, k) for x in packed]

    def b_k(k: int) -> np.ndarray:
        if k == 0:
            return grid_b
        keep = cm.column_mask(unit, s1 - k)
        return keep * grid_b + (1.0 - keep) * np.roll(grid_b, -s1, axis=2)

    return _accumulate(a, b.shape[1], a_k, b_k, h, out_scale, lambda x, y: ev.mul_plain_raw(x, y, delta),
                       lambda z: ev.rescale(z, delta))


def diag_atb(a: TensorBase, b: TensorBase, *, out_scale: float = 1.0, out_level: int | None = None,
             variant: str | None = None) -> Any:
    """C = out_scale · Aᵀ·B as an EncTensor, vertically tiled; A horizontal (batch × c), B grid (batch × f).

    No autograd (``g.T @ x`` records it). See ``diag_atb_blocks`` for levels and variants.

    >>> grad_w = diag_atb(p_minus_y, x, out_scale=1 / 1024)     # doctest: +SKIP
    """
    blocks, layout = diag_atb_blocks(a, b, out_scale=out_scale, out_level=out_level, variant=variant)
    return a._new(blocks, layout)


def diag_atb_plain(a: TensorBase, b: Any, *, out_scale: float = 1.0, out_level: int | None = None) -> Any:
    """C = out_scale · Aᵀ·B as an EncTensor with B a plaintext (batch × f) matrix.

    >>> grad = diag_atb_plain(g, x_plain)     # doctest: +SKIP
    """
    blocks, layout = diag_atb_plain_blocks(a, b, out_scale=out_scale, out_level=out_level)
    return a._new(blocks, layout)


def window_split(c_pad: int) -> int:
    """log2 of the number of pieces DiagATB's window fold is split into (``_accumulate``): the last e
    of the log c_pad window rotations per diagonal become 2^e − 1 per column block, for 2^e − 1 more
    CMults per diagonal; e = ⌊log2(c_pad)/2⌋ (c_pad = 16: 800 → 475 rotations at (1024, 769, 10))."""
    return cm.log2(c_pad) // 2


def _accumulate(a: TensorBase, features: int, a_k: Any, b_k: Any, h: int, out_scale: float,
                product: Any, finish: Any) -> tuple[Blocks, BlockLayout]:
    """Steps 1.2-2 of Algorithm 5: per diagonal and column block, multiply, fold rows, place.

    The row fold runs in two stages: per diagonal, only over windows of c_pad rows; the diagonal
    mask N_k depends on the row only mod c_pad, so it can be applied then, and the remaining
    log(s0/c_pad) folds run once per column block on the sum over diagonals, a level lower:
    Σ_q Σ_k N_k ⊙ window_k(row + q·c_pad) = Σ_k N_k ⊙ Σ_rows z_k.

    The window fold itself is split (``window_split``): with w = c_pad/2^e, each diagonal is folded
    over windows of w rows only, and N_k ⊙ window(z) = Σ_d N_k ⊙ Rot(window_w(z), d·w·s1) =
    Σ_d Rot(Rot(N_k, −d·w·s1) ⊙ window_w(z), d·w·s1): the 2^e masks are rotated in the clear, the
    masked terms of each d are summed over the diagonals, and only their sums are rotated, once per
    column block. Rotations h·n_b·log c_pad → h·n_b·(log c_pad − e) + n_b·(2^e − 1).
    """
    ev = a.ctx.evaluator
    unit, (s0, s1) = a.layout.unit, a.layout.unit
    classes = a.shape[1]
    out_layout = BlockLayout((classes, features), unit, "vertical")
    c_pad, n_b = out_layout.c_pad, out_layout.grid[1]
    valid = out_layout.valid_mask()[0]  # padded classes and features stay exactly zero
    split = window_split(c_pad)
    pieces, w = 1 << split, c_pad >> split  # 2^e windows of w rows
    window_folds = [(1 << e) * s1 for e in range(cm.log2(w))]
    block_folds = [(c_pad << e) * s1 for e in range(cm.log2(s0) - cm.log2(c_pad))]
    delta = ev.params.scale

    def partial(share: list[tuple[int, list[int]]]) -> list[Cipher]:
        acc: dict[tuple[int, int], Cipher] = {}
        for k, cols in share:
            ak, bk = a_k(k), b_k(k)
            if h:
                place = 0.5 * out_scale * (cm.diagonal_mask(unit, c_pad, k, True)
                                           - 1j * cm.diagonal_mask(unit, c_pad, k + h, True))
            else:
                place = out_scale * cm.diagonal_mask(unit, c_pad, k, True)
            for j in cols:
                z = product(ak[0], bk[0][j])
                for i in range(1, len(ak)):
                    z = ev.add(z, product(ak[i], bk[i][j]))
                z = finish(z)
                for step in window_folds:
                    z = ev.add(z, ev.rotate(z, step))
                for d in range(pieces):  # Rot(mask, −d·w·s1) in the clear = np.roll by +d·w·s1
                    term = ev.mul_plain_raw(z, np.roll(place * valid[j], d * w * s1), delta)
                    acc[j, d] = term if (j, d) not in acc else ev.add(acc[j, d], term)
        return [acc[key] for key in sorted(acc)]

    diagonals = range(max(h, 1))
    flat = cm.sum_over_diagonals(a.ctx, diagonals, n_b, partial, len(diagonals) * n_b * a.layout.grid[0],
                                 width=pieces)
    acc = []
    for j in range(n_b):
        # One rescale per piece and column block for the sum over diagonals, then Σ_d Rot(y_d, d·w·s1)
        # as a tree over power-of-two steps (2^e − 1 rotations, keys the block fold has anyway).
        ys = [ev.rescale(y, delta) for y in flat[j * pieces:(j + 1) * pieces]]
        stride = 1
        while len(ys) > 1:
            ys = [ev.add(ys[i], ev.rotate(ys[i + 1], stride * w * s1)) for i in range(0, len(ys), 2)]
            stride *= 2
        z = ys[0]
        for step in block_folds:  # every row ends up holding its column sums: no mask needed
            z = ev.add(z, ev.rotate(z, step))
        acc.append(z)
    blocks = [[ev.real_part_times_two(c) if h else c for c in acc]]
    return blocks, out_layout
