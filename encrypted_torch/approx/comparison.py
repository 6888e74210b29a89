"""Composite comparison of Cheon, Kim and Kim (Asiacrypt 2020) and the approximate max built on it.

comp(y) = (f^∘df(g^∘dg(y)) + 1)/2 ≈ [y > 0] for y = a − b ∈ [−1, 1], and
max(a, b) ≈ b + (a − b)·comp(a − b) = (a + b)/2 + (a − b)·h(a − b) with h = f^∘df∘g^∘dg / 2.
HETAL.md §4 step 2; HETAL's benchmark uses df = 1, dg = 2.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ..ckks.evaluator import Cipher, Evaluator
from .polynomial import EnsureFn, Polynomial

CKK_SOURCE = "Cheon, Kim, Kim, 'Efficient homomorphic comparison methods with optimal complexity', " \
             "Asiacrypt 2020 (f_3, g_3); HETAL.md §4 step 2"

#: f_3(x) = (35x − 35x³ + 21x⁵ − 5x⁷)/16 maps [−1, 1] onto [−1, 1], increasing, f(±1) = ±1.
F3 = Polynomial("f3", (0.0, 35 / 16, 0.0, -35 / 16, 0.0, 21 / 16, 0.0, -5 / 16), (-1.0, 1.0),
                0.0, "f3([−1, 1]) ⊂ [−1, 1] (no approximation error: f3 is used as is)", CKK_SOURCE)
#: g_3(x) = (4589x − 16577x³ + 25614x⁵ − 12860x⁷)/1024 maps [−1, 1] into [−0.99976, 0.99976].
G3 = Polynomial("g3", (0.0, 4589 / 1024, 0.0, -16577 / 1024, 0.0, 25614 / 1024, 0.0, -12860 / 1024),
                (-1.0, 1.0), 0.0, "g3([−1, 1]) ⊂ [−1, 1] (no approximation error: g3 is used as is)",
                CKK_SOURCE)

# max_y∈[−1,1] |y|·|comp(y) − [y > 0]| on a linear grid of 2·10⁶ points plus a log grid towards 0
# (where the maximum of the deep compositions sits), rounded up; the tests re-prove each on other grids.
_MAX_ERROR = {(1, 1): 1.38e-2, (1, 2): 5.11e-3, (1, 3): 5.42e-3, (2, 2): 1.42e-3, (2, 3): 3.2e-4,
              (3, 8): 8.0e-8}


def unit_grid(n: int = 2_000_001) -> np.ndarray:
    """[−1, 1] linearly, plus ±10^[−10, 0] logarithmically (comp's steep part sits near 0)."""
    log = np.logspace(-10, 0, n // 5)
    return np.concatenate([np.linspace(-1.0, 1.0, n), log, -log])


@dataclass(frozen=True)
class Comparison:
    """comp = (f^∘df ∘ g^∘dg + 1)/2 on [−1, 1], and the max built on it.

    Contract: comp([−1, 1]) ⊂ [0, 1], so the approximate max of a and b is a convex combination of
    them and never exceeds the true max; and ``max_error`` bounds the shortfall
    max(a, b) − max≈(a, b) = |a − b|·|comp(a − b) − [a > b]| for |a − b| ≤ 1.
    """

    df: int = 1
    dg: int = 2

    def __post_init__(self) -> None:
        if self.df < 0 or self.dg < 0 or self.df + self.dg == 0:
            raise ValueError(f"comparison needs df, dg ≥ 0 and df + dg ≥ 1, got {self.df}, {self.dg}")

    domain = (-1.0, 1.0)
    source = CKK_SOURCE

    @property
    def depth(self) -> int:
        """Levels of comp: 3 per odd degree-7 polynomial."""
        return 3 * (self.df + self.dg)

    @property
    def polynomials(self) -> list[Polynomial]:
        return [G3] * self.dg + [F3] * self.df

    @cached_property
    def max_error(self) -> float:
        """Bound on the max's shortfall (normalized units), from the table or measured once."""
        known = _MAX_ERROR.get((self.df, self.dg))
        if known is not None:
            return known
        y = unit_grid()
        return float(np.max(np.abs(y) * np.abs(self.comp(y) - (y > 0))) * 1.01 + 1e-12)

    def sign(self, y: np.ndarray) -> np.ndarray:
        """f^∘df(g^∘dg(y)) ≈ sign(y)."""
        for p in self.polynomials:
            y = p(y)
        return y

    def comp(self, y: np.ndarray) -> np.ndarray:
        return (self.sign(y) + 1) / 2

    def max(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(a + b)/2 + (a − b)·sign(a − b)/2: the form evaluated on ciphertexts."""
        d = a - b
        return (a + b) / 2 + d * self.sign(d) / 2

    def cipher_polynomials(self, in_scale: float = 1.0, out_factor: float = 1.0) -> list[Polynomial]:
        """The chain with an input scale folded into the first and a factor into the last."""
        polys = list(self.polynomials)
        polys[0] = polys[0].of_scaled(in_scale) if in_scale != 1.0 else polys[0]
        polys[-1] = polys[-1].times(out_factor) if out_factor != 1.0 else polys[-1]
        return polys

    def evaluate_half_sign(self, ev: Evaluator, diffs: Sequence[Cipher], ensure: EnsureFn,
                           in_scale: float = 1.0) -> list[Cipher]:
        """h = sign(in_scale·d)/2 for each cipher of ``diffs``; ``ensure`` gives each polynomial
        its 3 levels (``refresh.ensure_levels``: refresh, or DepthError without a refresher)."""
        hs = list(diffs)
        for p in self.cipher_polynomials(in_scale, 0.5):
            hs = p.evaluate_all(ev, hs, ensure, f"softmax max ({p.name})")
        return hs
