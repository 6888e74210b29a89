"""Operation counts of the matrix products as formulas (HETAL.md §3.3), for tests and benchmarks.

``paper_*`` are the corrected Table 6 of HETAL (both printed typos fixed, packing charged once,
c read as c_pad for the Diag algorithms). The other functions count what encrypted_torch runs on
SEAL; each differs from the paper only by the terms its docstring names (×i, per-block-row packing,
PRotUp's shared rotation). Sizes: a × b matrices, c classes, unit (s0, s1);
n_a = ⌈a/s0⌉, n_b = ⌈b/s1⌉, h = c_pad/2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..tensor.layout import next_pow2


@dataclass(frozen=True)
class Counts:
    """CMult (ct×pt), Mult (ct×ct), Rot (key-switching rotations), conjugations."""

    cmult: int
    mult: int
    rot: int
    conj: int = 0

    def table(self) -> str:
        """CMult/Mult/Rot, as HETAL's Table 7 prints them."""
        return f"{self.cmult}/{self.mult}/{self.rot}"


@dataclass(frozen=True)
class Sizes:
    n_a: int
    n_b: int
    log_s0: int
    log_s1: int
    c_pad: int

    @property
    def h(self) -> int:
        return self.c_pad // 2


def sizes(a: int, b: int, c: int, unit: tuple[int, int]) -> Sizes:
    s0, s1 = unit
    return Sizes(math.ceil(a / s0), math.ceil(b / s1), s0.bit_length() - 1, s1.bit_length() - 1, next_pow2(c))


def paper_diag_abt(a: int, b: int, c: int, unit: tuple[int, int]) -> Counts:
    z = sizes(a, b, c, unit)
    return Counts(z.c_pad * z.n_a, z.h * z.n_a * z.n_b, z.h * (z.n_b + 2 * z.n_a * z.log_s1))


def paper_diag_atb(a: int, b: int, c: int, unit: tuple[int, int], variant: str = "mask_a") -> Counts:
    z = sizes(a, b, c, unit)
    h, n_a, n_b = z.h, z.n_a, z.n_b
    if variant == "mask_a":
        return Counts(1 + h * (n_a + n_b) - n_a, h * n_a * n_b, 2 + h * (2 * n_a + n_b * z.log_s0) - 2 * n_a)
    return Counts(1 + h * n_b + (h - 1) * n_a * n_b, h * n_a * n_b,
                  2 + h * (n_a + n_a * n_b + n_b * z.log_s0) - n_a - n_a * n_b)


def paper_colmajor(a: int, b: int, c: int, unit: tuple[int, int]) -> Counts:
    z = sizes(a, b, c, unit)
    return Counts(c * (z.n_a * z.n_b + z.n_a), c * z.n_a * z.n_b,
                  c * (z.n_b * z.log_s0 + z.n_a * (z.log_s1 + 1)) - z.n_a)


def paper_rowmajor(a: int, b: int, c: int, unit: tuple[int, int]) -> Counts:
    col = paper_colmajor(a, b, c, unit)
    z = sizes(a, b, c, unit)
    return Counts(c * z.n_a * z.n_b + c, col.mult, col.rot)


def paper_jin_abt(a: int, b: int, c: int, slots: int) -> Counts:
    return Counts(0, b * c, 0)


def paper_jin_atb(a: int, b: int, c: int, slots: int) -> Counts:
    return Counts(0, b * c, b * c * (slots.bit_length() - 1))


def diag_abt(a: int, b: int, c: int, unit: tuple[int, int], imag: str = "const") -> Counts:
    """``imag="const"`` (option a): the paper's counts + n_b CMults (×i on B) + n_a conjugations.
    ``imag="real"`` (option c, and any c_pad = 1): all c_pad diagonals unpacked, no conjugation."""
    z = sizes(a, b, c, unit)
    if imag == "const" and z.c_pad > 1:
        paper = paper_diag_abt(a, b, c, unit)
        return Counts(paper.cmult + z.n_b, paper.mult, paper.rot, z.n_a)
    c_pad = z.c_pad
    return Counts(2 * c_pad * z.n_a, c_pad * z.n_a * z.n_b,
                  (c_pad - 1) * z.n_b + 2 * c_pad * z.n_a * z.log_s1)


def diag_abt_plain(a: int, b: int, c: int, unit: tuple[int, int]) -> Counts:
    """B plaintext: its h·n_a·n_b products become CMults and its shifts are free."""
    z = sizes(a, b, c, unit)
    diags, conj = (z.h, z.n_a) if z.c_pad > 1 else (1, 0)
    return Counts(diags * z.n_a * z.n_b + 2 * diags * z.n_a, 0, 2 * diags * z.n_a * z.log_s1, conj)


def diag_atb(a: int, b: int, c: int, unit: tuple[int, int], variant: str = "mask_a") -> Counts:
    """The paper's counts, with the packing (2 Rot + 1 CMult) per block row, + 1 CMult per block row
    for ×i in the packing masks (option b), + n_b conjugations; "prot_up" computes Rot(B, s1) once
    for all k (n_a·n_b Rot) where the paper rotates h−1 times; the row fold in two stages
    (``fold_rotations``), its window split in P = ``window_pieces`` (P CMults per diagonal and
    column block instead of 1)."""
    z = sizes(a, b, c, unit)
    h, n_a, n_b = z.h, z.n_a, z.n_b
    if h == 0:
        return Counts(n_b, n_a * n_b, n_b * z.log_s0)
    fold, p = fold_rotations(z), window_pieces(z)
    if variant == "mask_a":
        return Counts(2 * n_a + (h - 1) * n_a + p * h * n_b, h * n_a * n_b,
                      2 * n_a + 2 * (h - 1) * n_a + fold, n_b)
    shared = n_a * n_b if h >= 2 else 0
    return Counts(2 * n_a + p * h * n_b + (h - 1) * n_a * n_b, h * n_a * n_b,
                  2 * n_a + (h - 1) * n_a + shared + fold, n_b)


def diag_atb_plain(a: int, b: int, c: int, unit: tuple[int, int]) -> Counts:
    """B plaintext (the "prot_up" structure): products become CMults, B's PRotUp is free."""
    z = sizes(a, b, c, unit)
    h, n_a, n_b = z.h, z.n_a, z.n_b
    if h == 0:
        return Counts(n_a * n_b + n_b, 0, n_b * z.log_s0)
    return Counts(2 * n_a + h * n_a * n_b + window_pieces(z) * h * n_b, 0,
                  2 * n_a + (h - 1) * n_a + fold_rotations(z), n_b)


def window_pieces(z: Sizes) -> int:
    """P = 2^e, e = ⌊log2(c_pad)/2⌋: DiagATB's window fold split in P pieces (``diag_atb.window_split``)."""
    return 1 << ((z.c_pad.bit_length() - 1) // 2)


def fold_rotations(z: Sizes) -> int:
    """DiagATB's row folds: log c_pad − e per diagonal and column block (over windows of c_pad/P
    rows, before the diagonal masks), P − 1 per column block to join the P pieces, then
    log(s0/c_pad) per column block; the paper folds all log s0 rows per diagonal (h·n_b·log s0).
    Without the split (P = 1) the first term was h·n_b·log c_pad."""
    log_c = z.c_pad.bit_length() - 1
    p = window_pieces(z)
    return z.h * z.n_b * (log_c - (p.bit_length() - 1)) + z.n_b * (p - 1) + z.n_b * (z.log_s0 - log_c)


def colmajor(a: int, b: int, c: int, unit: tuple[int, int]) -> Counts:
    """Crockett ColMajor as benchmarks/matmul_baselines.py runs it: the row mask of B once per
    class (n_b CMults), where Table 6 charges it per block row (n_a·n_b); equal when n_a = 1."""
    z = sizes(a, b, c, unit)
    paper = paper_colmajor(a, b, c, unit)
    return Counts(c * (z.n_b + z.n_a), paper.mult, paper.rot)


def rowmajor(a: int, b: int, c: int, unit: tuple[int, int]) -> Counts:
    """Crockett RowMajor as run: column mask per block row, row mask per column block:
    c·(n_a + n_b) CMults against Table 6's c·n_a·n_b + c; equal when n_a = 1."""
    z = sizes(a, b, c, unit)
    paper = paper_rowmajor(a, b, c, unit)
    return Counts(c * (z.n_a + z.n_b), paper.mult, paper.rot)


@dataclass(frozen=True)
class Finishing:
    """Relinearizations and rescales: one per sum of products (lazy), not one per product."""

    relin: int
    rescale: int


def diag_abt_finishing(a: int, b: int, c: int, unit: tuple[int, int], imag: str = "const") -> Finishing:
    """DiagABT: per diagonal and block row, one relinearization and one rescale for the n_b products,
    one rescale for e₀; one rescale per block row for the sum over diagonals of the placed terms;
    ``imag="const"`` adds n_b rescales (×i on B). Per product this was n_b + 3·d·n_a rescales
    (d diagonals): lazy placement saves (d − 1)·n_a."""
    z = sizes(a, b, c, unit)
    if imag == "const" and z.c_pad > 1:
        return Finishing(z.h * z.n_a, z.n_b + 2 * z.h * z.n_a + z.n_a)
    if imag == "plain":
        d = z.h if z.c_pad > 1 else 1
        return Finishing(0, 2 * d * z.n_a + z.n_a)  # per product: d·n_a·n_b + 2·d·n_a
    return Finishing(z.c_pad * z.n_a, 2 * z.c_pad * z.n_a + z.n_a)


def diag_atb_finishing(a: int, b: int, c: int, unit: tuple[int, int], variant: str = "mask_a") -> Finishing:
    """DiagATB: the packing (2 rescales per block row), the per-k masks (``mask_a``: one per block
    row; ``prot_up``: one per block), one relinearization and one rescale per diagonal and column
    block, one rescale per window piece (``window_pieces``) and column block for the sum over
    diagonals. Per product the last term was h·n_b (P·h·n_b with the split): lazy placement saves
    (h − 1)·P·n_b; ``plain`` (CMults summed before one rescale) saves h·n_b·(n_a − 1) more."""
    z = sizes(a, b, c, unit)
    h, n_a, n_b = z.h, z.n_a, z.n_b
    d, p = max(h, 1), window_pieces(z)
    pack = 2 * n_a if h else 0
    if variant == "plain":
        return Finishing(0, pack + d * n_b + p * n_b)
    shift = (h - 1) * n_a if variant == "mask_a" else (h - 1) * n_a * n_b
    return Finishing(d * n_b, pack + max(shift, 0) + d * n_b + p * n_b)
