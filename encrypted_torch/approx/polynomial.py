"""Polynomials as data with a contract, evaluated on numpy (Horner) and on ciphertexts (depth-optimal).

A ``Polynomial`` states its coefficients, its domain, its max error there, what that error is
measured against, its depth in levels and its source. On ciphertexts a degree-d polynomial takes
⌈log2(d+1)⌉ levels (odd degree 7 in 3, degree 8 in 4): p = A + x^m·B with m the largest power of
two ≤ d, recursively, every constant folded into a plaintext factor that is needed anyway, and
every term steered onto the exact scale of the term it is added to, so no scale alignment is ever
paid (``count_ops().scale_alignments == 0``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from ..ckks.evaluator import Cipher, Evaluator
from ..errors import DepthError

EnsureFn = Callable[[Sequence[Cipher], int, str], list[Cipher]]

#: A coefficient is a number, or a slot vector when a mask or a per-slot constant is folded in.
Coefficient = float | np.ndarray


@dataclass(frozen=True)
class Polynomial:
    """p(x) = Σ_k coefficients[k]·x^k, with its contract on ``domain``.

    >>> p = Polynomial("x - x^3/3", (0.0, 1.0, 0.0, -1 / 3), (-1.0, 1.0), 0.0, "exact", "example")
    >>> float(p(np.array(1.0))), p.depth
    (0.6666666666666667, 2)
    """

    name: str
    coefficients: tuple[float, ...]
    domain: tuple[float, float]
    max_error: float
    error_of: str  # what max_error bounds on the domain, e.g. "|p(x) − e^x|"
    source: str

    @property
    def degree(self) -> int:
        nonzero = [k for k, c in enumerate(self.coefficients) if c != 0]
        return nonzero[-1] if nonzero else 0

    @property
    def depth(self) -> int:
        """Levels one ciphertext evaluation consumes: ⌈log2(degree + 1)⌉."""
        return math.ceil(math.log2(self.degree + 1)) if self.degree else 0

    def __call__(self, x: np.ndarray | float) -> np.ndarray:
        """Horner's rule, seeded with the leading coefficient and adding each lower one once
        (HETAL.md §4 pitfall 1: the reference adds c_d twice and computes p(x) + c_d·x^(d+1))."""
        x = np.asarray(x, dtype=np.float64)
        coeffs = self.coefficients[: self.degree + 1]
        acc = np.full_like(x, coeffs[-1])
        for c in reversed(coeffs[:-1]):
            acc = acc * x + c
        return acc

    def of_scaled(self, k: float) -> Polynomial:
        """q(x) = p(k·x): an input scale folded into the coefficients; domain divided by k."""
        lo, hi = sorted((self.domain[0] / k, self.domain[1] / k))
        coeffs = tuple(c * k**j for j, c in enumerate(self.coefficients))
        return replace(self, name=f"{self.name}({k:g}·x)", coefficients=coeffs, domain=(lo, hi))

    def times(self, a: float) -> Polynomial:
        """q(x) = a·p(x): an output factor folded into the coefficients; error scaled by |a|."""
        coeffs = tuple(a * c for c in self.coefficients)
        return replace(self, name=f"{a:g}·{self.name}", coefficients=coeffs,
                       max_error=abs(a) * self.max_error, error_of=f"{abs(a):g}·{self.error_of}")

    def evaluate(self, ev: Evaluator, x: Cipher, *, factor: Coefficient = 1.0,
                 out_scale: float | None = None) -> Cipher:
        """factor·p(x) on a ciphertext in ``depth`` levels, landing exactly on ``out_scale``.

        ``factor`` (a number or a slot vector, e.g. a mask) multiplies every coefficient, so it
        costs no level. ``out_scale`` defaults to x's scale, which makes a unit linear term free.
        """
        if x.level < self.depth:
            raise DepthError(f"polynomial {self.name}", self.depth, x.level)
        coeffs = [_fold(c, factor) for c in self.coefficients[: self.degree + 1]]
        return evaluate_coefficients(ev, x, coeffs, x.scale if out_scale is None else out_scale)

    def evaluate_all(self, ev: Evaluator, xs: Sequence[Cipher], ensure: EnsureFn, op: str,
                     factors: Sequence[Coefficient] | None = None) -> list[Cipher]:
        """factor·p(x) for each cipher, ``ensure`` (``refresh.ensure_levels``) giving them the levels.

        A polynomial one level deeper than a fresh ciphertext (p8 at 3 levels per ciphertext) is
        split as A(x) + c_m·x^m, m = 2^k the degree: A and x^m take depth − 1 levels, then x^m
        alone is refreshed for its coefficient.
        """
        factors = [1.0] * len(xs) if factors is None else list(factors)
        if self.depth <= ev.top_level:
            xs = ensure(list(xs), self.depth, op)
            return [self.evaluate(ev, x, factor=f) for x, f in zip(xs, factors, strict=True)]
        m = self.degree
        if m & (m - 1) or self.depth - 1 > ev.top_level:
            raise DepthError(op, self.depth, ev.top_level, "even a fresh ciphertext is too shallow and "
                             "the polynomial cannot be split; pick a deeper preset")
        xs = ensure(list(xs), self.depth - 1, op)
        lows, tops = [], []
        for x, f in zip(xs, factors, strict=True):
            powers = _powers(ev, x, m)
            lows.append(evaluate_coefficients(ev, x, [_fold(c, f) for c in self.coefficients[:m]], x.scale,
                                              powers))
            tops.append(powers[m])
        tops = ensure(tops, 1, f"{op} (x^{m})")
        return [ev.add(low, ev.mul_plain(t, _fold(self.coefficients[m], f), out_scale=low.scale))
                for low, t, f in zip(lows, tops, factors, strict=True)]


def _fold(c: float, factor: Coefficient) -> Coefficient:
    if c == 0:
        return 0.0
    if isinstance(factor, np.ndarray):
        return c * factor
    return c * float(factor)


def _is_zero(c: Coefficient) -> bool:
    return not np.any(c)


def _degree(coeffs: Sequence[Coefficient]) -> int:
    nonzero = [k for k, c in enumerate(coeffs) if not _is_zero(c)]
    return nonzero[-1] if nonzero else 0


def _powers(ev: Evaluator, x: Cipher, up_to: int) -> dict[int, Cipher]:
    """x, x², x⁴, … up to the largest power of two ≤ ``up_to``, by repeated squaring."""
    powers = {1: x}
    m = 1
    while 2 * m <= up_to:
        powers[2 * m] = ev.square(powers[m])
        m *= 2
    return powers


def evaluate_coefficients(ev: Evaluator, x: Cipher, coeffs: Sequence[Coefficient], out_scale: float,
                          powers: dict[int, Cipher] | None = None) -> Cipher:
    """Σ coeffs[k]·x^k at level x.level − ⌈log2(d+1)⌉ and scale exactly ``out_scale``."""
    deg = _degree(coeffs)
    if deg == 0:
        raise ValueError("a constant polynomial needs no ciphertext evaluation")
    depth = math.ceil(math.log2(deg + 1))
    powers = _powers(ev, x, deg) if powers is None else powers
    return _collect(ev, *_node(ev, powers, list(coeffs[: deg + 1]), x.level - depth, out_scale), out_scale)


Terms = tuple[list[Cipher], Cipher | None, Coefficient]
"""A sum landing on (level, scale): products not rescaled yet (at level + 1, scale·q_(level+1)), a
part already there (or None), and the constant apart."""


def _collect(ev: Evaluator, raws: list[Cipher], done: Cipher | None, const: Coefficient,
             scale: float) -> Cipher:
    """The sum ``_node`` describes as one cipher: its products added first, then relinearized and
    rescaled once (lazy relinearization: one key switch and one rescale per sum, not per product)."""
    out = done
    if raws:
        total = raws[0]
        for r in raws[1:]:
            total = ev.add(total, r)
        total = ev.finish(total, scale)
        out = total if out is None else ev.add(out, total)
    assert out is not None
    return out if _is_zero(const) else ev.add_plain(out, const)


def _node(ev: Evaluator, powers: dict[int, Cipher], coeffs: list[Coefficient], level: int,
          scale: float) -> Terms:
    """The non-constant part of Σ coeffs[k]·x^k landing on exactly (level, scale), and the constant."""
    deg = _degree(coeffs)
    const = coeffs[0]
    if deg == 0:
        return [], None, const
    if deg == 1:
        return *_term(ev, powers[1], coeffs[1], level, scale), const
    m = 1 << (deg.bit_length() - 1)
    xm = powers[m]
    # x^m · B lands on (level, scale) when B sits one level up at scale·q/scale(x^m).
    b_scale = scale * ev.primes[level + 1] / xm.scale
    b_raws, b_done, b_const = _node(ev, powers, coeffs[m:], level + 1, b_scale)
    if not b_raws and b_done is None:
        raws, done = _term(ev, xm, b_const, level, scale)
    else:
        b_part = _collect(ev, b_raws, b_done, b_const, b_scale)
        raws, done = [ev.mul_raw(ev.mod_switch(xm, level + 1), b_part)], None
    a_raws, a_done, a_const = _node(ev, powers, coeffs[:m], level, scale)
    if a_done is not None:
        done = a_done if done is None else ev.add(a_done, done)
    return a_raws + raws, done, a_const


def _term(ev: Evaluator, xk: Cipher, c: Coefficient, level: int, scale: float) -> tuple[list[Cipher], Cipher | None]:
    """c·x^k landing on (level, scale): a mod switch when c is 1 and the scale already fits, else a
    product to rescale with the others of its sum."""
    if not isinstance(c, np.ndarray) and c == 1.0 and abs(xk.scale / scale - 1) < 1e-12:
        return [], ev.mod_switch(xk, level)
    return [ev.mul_plain_raw(ev.mod_switch(xk, level + 1), c, out_scale=scale)], None
