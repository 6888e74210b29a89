"""exp(x) ≈ p8(x/8)^8: HETAL's degree-8 polynomial followed by 3 squarings (HETAL.md §4 step 4)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ..ckks.evaluator import Cipher, Evaluator
from .polynomial import Coefficient, EnsureFn, Polynomial

SOURCE = "HETAL (Lee et al., ICML 2023) Algorithm 1, exp step; coefficients from HETAL.md §4 step 4"

#: p8 ≈ e^t on [−1, 1]: max |p8(t) − e^t| = 3.8e-8 there (Taylor-8 would give 3.1e-6).
P8 = Polynomial(
    "p8",
    (1.000000001945585, 0.9999999388932228, 0.499999859398392, 0.16666798775227673,
     0.04166711228500117, 0.008328336039797088, 0.0013881473292497602, 0.00020492629147503022,
     2.551385701569812e-05),
    (-1.0, 1.0), 3.9e-8, "|p8(t) − e^t|", SOURCE)


@dataclass(frozen=True)
class Exp:
    """e^x ≈ p(x/8)^8: p = HETAL's p8 (``max_error`` bounds |p8(x/8)^8/e^x − 1| on [−8, 8]), or a
    polynomial refitted after the domain extension (its own contract: ``extension.Q8_R128``).

    On ciphertexts it takes w = x/8 (the domain extension's output) and folds a per-slot factor
    (the class mask and a constant) into p's coefficients as its 8th root, so masking is free.
    """

    squarings: int = 3
    poly: Polynomial = P8

    @property
    def source(self) -> str:
        return self.poly.source

    @property
    def error_of(self) -> str:
        return "|p8(x/8)^8 / e^x − 1| for x ∈ [−8, 8]" if self.poly == P8 else self.poly.error_of

    @property
    def domain(self) -> tuple[float, float]:
        k = 2**self.squarings
        return (k * self.poly.domain[0], k * self.poly.domain[1])

    @property
    def depth(self) -> int:
        return self.poly.depth + self.squarings

    @cached_property
    def max_error(self) -> float:
        if self.poly != P8:
            return self.poly.max_error
        return 5.2e-7  # measured 5.12e-7 on a grid of 4·10⁶ points (HETAL.md: 5.1e-7); the tests re-prove it

    def __call__(self, x: np.ndarray) -> np.ndarray:
        k = 2**self.squarings
        e = self.poly(np.asarray(x, dtype=np.float64) / k)
        for _ in range(self.squarings):
            e = e * e
        return e

    def evaluate(self, ev: Evaluator, ws: Sequence[Cipher], ensure: EnsureFn,
                 factors: Sequence[Coefficient] | None = None) -> list[Cipher]:
        """factor·e^{8w} for each cipher of ``ws`` (w = x/8); ``factors`` ≥ 0 (numbers or slot
        vectors), one per cipher, ride on p8's coefficients as their 8th roots: no level."""
        roots = [1.0] * len(ws) if factors is None else [_root(f, 2**self.squarings) for f in factors]
        es = self.poly.evaluate_all(ev, ws, ensure, "softmax exp (p8)", roots)
        for _ in range(self.squarings):
            es = ensure(es, 1, "softmax exp (squaring)")
            es = [ev.square(e) for e in es]
        return es


def _root(f: Coefficient, k: int) -> Coefficient:
    if np.any(np.asarray(f) < 0):
        raise ValueError("exp factors must be ≥ 0 (they enter as 8th roots)")
    return np.asarray(f, dtype=np.float64) ** (1 / k) if isinstance(f, np.ndarray) else float(f) ** (1 / k)
