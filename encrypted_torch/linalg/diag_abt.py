"""DiagABT (HETAL Algorithm 2, HETAL.md §3.1): C = A·Bᵀ for A grid (batch × features) and B vertically
tiled (classes × features); C comes out horizontally tiled (batch × classes), the softmax's layout.

Diagonal k of C, D_k[r] = C[r, (r+k) mod c_pad], is the row sum of A ⊙ (B shifted up k rows). Two
diagonals share a ciphertext as real and imaginary parts, which halves the products and folds.

SEAL has no free ×i (HETAL.md §3.4), so the imaginary half costs something:
  * ``imag="const"`` (option a): B̃ = B + i·Rot(B, h·s1) with i as a plaintext, one more level on B;
  * ``imag="real"`` (option c): every diagonal on its own, no packing, B keeps the level.
``imag="auto"`` takes "const": benchmarks/matmul.py measures it 1.3-1.7× faster in CPU time at the
four Table 7 sizes on N=16384 (1.70, 1.70, 1.31, 1.55×), since it halves the Mults, folds and row
shifts for n_b extra CMults. Without a Refresher it takes "real" when B has exactly the 3 levels
"real" needs, where "const" could not run; with one, "const" and a refresh of B's n_b blocks.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..ckks.evaluator import Cipher
from ..errors import DepthError, ShapeError
from ..refresh import level_policy
from ..tensor.base import Blocks, TensorBase
from ..tensor.layout import BlockLayout, next_pow2
from . import _common as cm
from .steps import diag_abt_steps

DEPTH = 3
"""Levels consumed on A's path (Mult, the column-0 mask e₀, the diagonal mask)."""

B_DEPTH = {"const": 4, "real": 3}
"""Levels consumed on B's path: option (a) spends one on ×i before the Mult."""

IMAG_OPTIONS = ("auto", "const", "real")


def levels_needed(imag: str = "const") -> tuple[int, int]:
    """(levels on A, levels on B) that DiagABT consumes with this ×i option."""
    if imag not in B_DEPTH:
        raise ValueError(f"imag must be 'const' or 'real' here, got {imag!r}")
    return DEPTH, B_DEPTH[imag]


def _check(a: Any, b: Any, op: str) -> None:
    cm.require_tiling(a, "grid", op, "A (batch × features)")
    cm.require_tiling(b, "vertical", op, "B (classes × features)")
    cm.require_same_keys(a, b, op)
    cm.require_same_unit(a, b, op)
    if a.shape[1] != b.shape[1]:
        raise ShapeError(f"{op}: A·Bᵀ needs the same feature count: A {tuple(a.shape)}, B {tuple(b.shape)}")
    _check_out(a.layout, b.shape[0], op)


def _check_out(layout: BlockLayout, classes: int, op: str) -> None:
    c_pad = next_pow2(classes)
    if c_pad > layout.s1:
        raise ShapeError(f"{op}: {classes} classes (c_pad={c_pad}) do not fit the horizontal tiling of "
                         f"{layout.unit} blocks (s1={layout.s1}); use a unit with s1 ≥ {c_pad}")


def _choose_imag(imag: str, level_b: int, out_level: int | None, c_pad: int, top: int) -> str:
    if imag not in IMAG_OPTIONS:
        raise ValueError(f"imag must be one of {IMAG_OPTIONS}, got {imag!r}")
    if c_pad == 1:
        return "real"  # a single diagonal: nothing to pack
    if imag != "auto":
        return imag
    target = 0 if out_level is None else out_level
    if target + B_DEPTH["const"] > top:
        return "real"  # the preset has too few levels for "const"
    if level_policy().prefer_const_packing:
        return "const"
    return "real" if level_b == target + B_DEPTH["real"] else "const"


def _out_level(a_level: int, b_level: int, need_a: int, need_b: int, out_level: int | None,
               top: int, op: str) -> int:
    if out_level is not None:
        if out_level < 0 or out_level + max(need_a, need_b) > top:
            raise DepthError(op, out_level + max(need_a, need_b), top,
                             f"a result at level {out_level} is out of this preset's reach")
        return out_level
    best = min(a_level - need_a, b_level - need_b)
    return max(best, 0)  # < 0: prepare() refreshes the short operand (or raises DepthError)


def diag_abt_blocks(a: TensorBase, b: TensorBase, *, out_scale: float = 1.0, out_level: int | None = None,
                    imag: str = "auto") -> tuple[Blocks, BlockLayout]:
    """The blocks and layout of C = out_scale · A·Bᵀ, horizontally tiled; A grid (a × f), B vertical
    (c × f), same unit. ``encrypted_torch.linalg.diag_abt`` wraps them in an EncTensor.

    Consumes ``levels_needed(imag)`` levels; the result is at ``out_level`` (default: the highest
    the operands allow). ``out_scale`` rides on the diagonal mask: no extra level.

    >>> blocks, layout = diag_abt_blocks(x, w)          # doctest: +SKIP
    """
    op = "DiagABT (x @ w.T)"
    _check(a, b, op)
    c_pad = b.layout.c_pad
    imag = _choose_imag(imag, b.level, out_level, c_pad, a.ctx.top_level)
    need_a, need_b = levels_needed(imag)
    cm.require_rotations(a.ctx, diag_abt_steps(a.layout.unit, c_pad, imag), op)
    ev = a.ctx.evaluator
    top = a.ctx.top_level
    out = _out_level(cm.planned_level(a, need_a, top), cm.planned_level(b, need_b, top), need_a, need_b,
                     out_level, top, op)
    cm.check_levels(op, ("A", a, out + need_a), ("B", b, out + need_b))
    blocks_a = cm.prepare(ev, a, out + need_a, op)
    blocks_b = cm.prepare(ev, b, out + need_b, op)[0]
    s1 = a.layout.s1
    if imag == "const":
        h = c_pad // 2
        # ×i on a plaintext at the scale the next rescale divides out: exact, 1 level (option a).
        # A uniform i commutes with the rotation, so the rotation runs after it, one level lower.
        packed = [ev.add(ev.mod_switch(bj, bj.level - 1), ev.rotate(ev.mul_plain(bj, 1j, bj.scale), h * s1))
                  for bj in blocks_b]
        diagonals = range(h)
    else:
        packed = blocks_b
        diagonals = range(c_pad)

    def shifted(k: int) -> list[Cipher]:
        return packed if k == 0 else [ev.rotate(bj, k * s1) for bj in packed]

    return _accumulate(a, b.shape[0], blocks_a, shifted, diagonals, imag == "const", out_scale,
                       lambda ai, bj: ev.mul_raw(ai, bj), finish=ev.finish)


def diag_abt_plain_blocks(a: TensorBase, b: Any, *, out_scale: float = 1.0,
                          out_level: int | None = None) -> tuple[Blocks, BlockLayout]:
    """The blocks and layout of C = out_scale · A·Bᵀ with B a plaintext (c × f) matrix: Mults become
    CMults, B's shifts and ×i are free (numpy). 3 levels on A.

    >>> blocks, layout = diag_abt_plain_blocks(x, w_plain)     # doctest: +SKIP
    """
    op = "DiagABT (x @ plaintext)"
    cm.require_tiling(a, "grid", op, "A (batch × features)")
    b = np.asarray(b, dtype=np.float64)
    if b.ndim != 2 or b.shape[1] != a.shape[1]:
        raise ShapeError(f"{op}: A·Bᵀ needs B of shape (classes, {a.shape[1]}); A {tuple(a.shape)}, "
                         f"B {tuple(b.shape)}")
    if not np.all(np.isfinite(b)):
        raise ShapeError(f"{op}: the plaintext operand holds NaN or inf")
    _check_out(a.layout, b.shape[0], op)
    b_layout = BlockLayout(b.shape, a.layout.unit, "vertical")
    c_pad = b_layout.c_pad
    packed_pairs = c_pad > 1
    cm.require_rotations(a.ctx, diag_abt_steps(a.layout.unit, c_pad, "plain"), op)
    ev = a.ctx.evaluator
    top = a.ctx.top_level
    out = _out_level(cm.planned_level(a, DEPTH, top), top, DEPTH, 0, out_level, top, op)
    cm.check_levels(op, ("A", a, out + DEPTH))
    blocks_a = cm.prepare(ev, a, out + DEPTH, op)
    s1 = a.layout.s1
    vecs = b_layout.pack(b)[0].astype(np.complex128)
    h = c_pad // 2
    if packed_pairs:
        vecs = vecs + 1j * np.roll(vecs, -h * s1, axis=1)

    def shifted(k: int) -> np.ndarray:
        return np.roll(vecs, -k * s1, axis=1)

    scale = ev.params.scale
    return _accumulate(a, b.shape[0], blocks_a, shifted, range(h if packed_pairs else c_pad), packed_pairs,
                       out_scale, lambda ai, bj: ev.mul_plain_raw(ai, bj, scale),
                       finish=lambda z: ev.rescale(z, scale))


def diag_abt(a: TensorBase, b: TensorBase, *, out_scale: float = 1.0, out_level: int | None = None,
             imag: str = "auto") -> Any:
    """C = out_scale · A·Bᵀ as an EncTensor, horizontally tiled; A grid (a × f), B vertical (c × f).

    No autograd (``x @ w.T`` records it). See ``diag_abt_blocks`` for levels and ×i.

    >>> logits = diag_abt(x, w)          # doctest: +SKIP
    """
    blocks, layout = diag_abt_blocks(a, b, out_scale=out_scale, out_level=out_level, imag=imag)
    return a._new(blocks, layout)


def diag_abt_plain(a: TensorBase, b: Any, *, out_scale: float = 1.0, out_level: int | None = None) -> Any:
    """C = out_scale · A·Bᵀ as an EncTensor with B a plaintext (c × f) matrix; 3 levels on A.

    >>> logits = diag_abt_plain(x, w_plain)     # doctest: +SKIP
    """
    blocks, layout = diag_abt_plain_blocks(a, b, out_scale=out_scale, out_level=out_level)
    return a._new(blocks, layout)


def _accumulate(a: TensorBase, classes: int, blocks_a: list[list[Cipher]], shifted: Any, diagonals: Any,
                packed: bool, out_scale: float, product: Any, finish: Any) -> tuple[Blocks, BlockLayout]:
    """Steps 1.2-2 of Algorithm 2: per diagonal and block row, multiply, fold, keep e₀, spread, place."""
    ev = a.ctx.evaluator
    unit = a.layout.unit
    s1 = a.layout.s1
    out_layout = BlockLayout((a.shape[0], classes), unit, "horizontal")
    c_pad = out_layout.c_pad
    h = c_pad // 2
    e0 = cm.column_mask(unit, 1)
    valid = (cm.col_index(unit) % c_pad < classes).astype(np.float64)
    folds = [1 << e for e in range(cm.log2(s1))]
    delta = ev.params.scale

    def partial(share: list[tuple[int, list[int]]]) -> list[Cipher]:
        acc: dict[int, Cipher] = {}
        for k, rows in share:
            bk = shifted(k)
            if packed:
                # Re((M_k − i·M_{k+h})(D_k + i·D_{k+h})) = M_k·D_k + M_{k+h}·D_{k+h}; ½ undoes a + conj(a).
                place = 0.5 * out_scale * valid * (cm.diagonal_mask(unit, c_pad, k, False)
                                                   - 1j * cm.diagonal_mask(unit, c_pad, k + h, False))
            else:
                place = out_scale * valid * cm.diagonal_mask(unit, c_pad, k, False)
            for i in rows:
                row = blocks_a[i]
                z = product(row[0], bk[0])
                for j in range(1, len(row)):
                    z = ev.add(z, product(row[j], bk[j]))  # lazy: one relinearization/rescale per sum
                z = finish(z)
                for step in folds:
                    z = ev.add(z, ev.rotate(z, step))
                z = ev.mul_plain(z, e0, delta)
                for step in folds:
                    z = ev.add(z, ev.rotate(z, -step))
                term = ev.mul_plain_raw(z, place, delta)
                acc[i] = term if i not in acc else ev.add(acc[i], term)
        return [acc[i] for i in sorted(acc)]

    diagonals = list(diagonals)
    acc = cm.sum_over_diagonals(a.ctx, diagonals, len(blocks_a), partial,
                                len(diagonals) * sum(map(len, blocks_a)))
    acc = [ev.rescale(c, delta) for c in acc]  # one rescale per block row for the sum over diagonals
    blocks = [[ev.real_part_times_two(c) if packed else c] for c in acc]
    return blocks, out_layout
