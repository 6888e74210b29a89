"""The prior encrypted matrix products HETAL compares with (HETAL.md §3.3), on our Evaluator.

Benchmarks only, not public API. Each takes its operands in its own packing, already at the level
it needs (``LEVELS``: levels consumed on A and on B), and gets the same SEAL treatment as ours:
products that are summed are relinearized once (lazy), and every operand is brought as low as the
result allows before the rotations, so a ratio measures the algorithms, not the implementations.

* Jin et al. (PrivGD) AᵀB: A and B packed by columns; each product of a column pair is summed over
  all slots (log s rotations), leaving C[k,t] replicated in its own ciphertext.
* Jin et al. ABᵀ: A packed by columns, each entry B[k,t] replicated in its own ciphertext;
  C[:,k] = Σ_t A[:,t]·B[k,t], one column of C per ciphertext.
* Crockett ColMajor (ABᵀ): per class k, mask row k of B, fill every row with it, multiply with A,
  sum the columns, keep column 0 and shift it to column k.
* Crockett RowMajor (AᵀB): per class k, mask column k of A, shift it to column 0, fill the row,
  multiply with B, sum the rows, keep row k.

Crockett's results are plain row-major matrices (grid layout, classes in columns 0…c−1 or rows
0…c−1), not HETAL's tilings.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from encrypted_torch.ckks.evaluator import Cipher, Evaluator

LEVELS = {"jin_abt": (1, 1), "jin_atb": (1, 1), "colmajor": (2, 3), "rowmajor": (3, 2)}


def _log2(n: int) -> int:
    return n.bit_length() - 1


def _grid(unit: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    s0, s1 = unit
    idx = np.arange(s0 * s1)
    return idx // s1, idx % s1


def steps(unit: tuple[int, int], c: int) -> list[int]:
    """Rotation keys the four baselines use for this unit shape and class count."""
    s0, s1 = unit
    slots = s0 * s1
    out = {(1 << e) * s1 for e in range(_log2(s0))} | {1 << e for e in range(_log2(s1))}
    out |= {-(1 << e) for e in range(_log2(s1))} | {k for k in range(1, c)} | {-k for k in range(1, c)}
    out |= {1 << e for e in range(_log2(slots))}
    return sorted(out)


# --- packing (client side, untimed) ------------------------------------------------------------------
def encrypt_columns(ev: Evaluator, m: np.ndarray, level: int) -> list[Cipher]:
    """One ciphertext per column of m (rows ≤ slots), zero-padded: Jin's packing."""
    rows, cols = m.shape
    out = []
    for t in range(cols):
        v = np.zeros(ev.slots)
        v[:rows] = m[:, t]
        out.append(ev.encrypt(v, level=level))
    return out


def encrypt_entries(ev: Evaluator, m: np.ndarray, level: int, rows: Iterable[int]) -> list[list[Cipher]]:
    """Every entry m[k,t] of the given rows replicated in its own ciphertext: Jin's ABᵀ packing of B."""
    return [[ev.encrypt(float(x), level=level) for x in m[k]] for k in rows]


# --- Jin et al. (PrivGD) -----------------------------------------------------------------------------
def jin_abt(ev: Evaluator, a_cols: Sequence[Cipher], b_entries: Sequence[Sequence[Cipher]],
            lazy: bool = True) -> list[Cipher]:
    """C[:,k] = Σ_t A[:,t]·B[k,t], one ciphertext per class row given: b·c Mults, no rotation.

    ``lazy=False`` relinearizes every product, as the Mult of Table 6 does: b·c key switches
    instead of c.
    """
    mul = ev.mul_raw if lazy else ev.mul
    out = []
    for row in b_entries:
        z = mul(a_cols[0], row[0])
        for a_t, b_kt in zip(a_cols[1:], row[1:], strict=True):
            z = ev.add(z, mul(a_t, b_kt))
        out.append(ev.finish(z) if lazy else z)
    return out


def jin_atb(ev: Evaluator, a_cols: Sequence[Cipher], b_cols: Sequence[Cipher],
            pairs: Iterable[tuple[int, int]]) -> dict[tuple[int, int], Cipher]:
    """C[k,t] = Σ_r A[r,k]·B[r,t] replicated over all slots, for each (k, t) given: log s Rot each."""
    folds = [1 << e for e in range(_log2(ev.slots))]
    out = {}
    for k, t in pairs:
        z = ev.mul(a_cols[k], b_cols[t])
        for step in folds:
            z = ev.add(z, ev.rotate(z, step))
        out[(k, t)] = z
    return out


# --- Crockett ------------------------------------------------------------------------------------------
def colmajor(ev: Evaluator, a_blocks: Sequence[Sequence[Cipher]], b_blocks: Sequence[Cipher],
             unit: tuple[int, int], classes: Iterable[int]) -> list[Cipher]:
    """C = A·Bᵀ: A grid (n_a × n_b blocks), B grid with the c rows of B on top (1 × n_b blocks).

    Returns one ciphertext per block row holding C[r, k] at column k, for the classes given.
    """
    s0, s1 = unit
    rows, cols = _grid(unit)
    e0 = (cols == 0).astype(np.float64)
    delta = ev.params.scale
    acc: list[Cipher | None] = [None] * len(a_blocks)
    for k in classes:
        row_k = (rows == k).astype(np.float64)
        b_k = []
        for bj in b_blocks:
            z = ev.mul_plain(bj, row_k, bj.scale)
            for e in range(_log2(s0)):  # fill: every row now holds B[k, :]
                z = ev.add(z, ev.rotate(z, (1 << e) * s1))
            b_k.append(z)
        for i, row in enumerate(a_blocks):
            z = ev.mul_raw(row[0], b_k[0])
            for aij, bj in zip(row[1:], b_k[1:], strict=True):
                z = ev.add(z, ev.mul_raw(aij, bj))
            z = ev.finish(z)
            for e in range(_log2(s1)):  # row sums land in column 0
                z = ev.add(z, ev.rotate(z, 1 << e))
            z = ev.mul_plain(z, e0, delta)
            if k:
                z = ev.rotate(z, -k)
            acc[i] = z if acc[i] is None else ev.add(acc[i], z)
    return [c for c in acc if c is not None]


def rowmajor(ev: Evaluator, a_blocks: Sequence[Cipher], b_blocks: Sequence[Sequence[Cipher]],
             unit: tuple[int, int], classes: Iterable[int]) -> list[Cipher]:
    """C = Aᵀ·B: A grid (a × c, classes in columns 0…c−1, n_a blocks), B grid (n_a × n_b blocks).

    Returns one ciphertext per column block holding C[k, t] at row k, for the classes given.
    """
    s0, s1 = unit
    rows, cols = _grid(unit)
    delta = ev.params.scale
    acc: list[Cipher | None] = [None] * len(b_blocks[0])
    for k in classes:
        col_k = (cols == k).astype(np.float64)
        a_k = []
        for ai in a_blocks:
            z = ev.mul_plain(ai, col_k, ai.scale)
            if k:
                z = ev.rotate(z, k)
            for e in range(_log2(s1)):  # fill: every column of row r now holds A[r, k]
                z = ev.add(z, ev.rotate(z, -(1 << e)))
            a_k.append(z)
        row_k = (rows == k).astype(np.float64)
        for j in range(len(acc)):
            z = ev.mul_raw(a_k[0], b_blocks[0][j])
            for i in range(1, len(a_k)):
                z = ev.add(z, ev.mul_raw(a_k[i], b_blocks[i][j]))
            z = ev.finish(z)
            for e in range(_log2(s0)):  # every row now holds the column sums
                z = ev.add(z, ev.rotate(z, (1 << e) * s1))
            z = ev.mul_plain(z, row_k, delta)
            acc[j] = z if acc[j] is None else ev.add(acc[j], z)
    return [c for c in acc if c is not None]
