"""HETAL's domain extension: B_R(x) = x − 4x³/(27R²) for R = r·L^i, i = n−1…0 (HETAL.md §4 step 3).

It maps d ∈ [−2·Rmax, 2·Rmax], Rmax = (r/2)·L^n, into [−r, r] while keeping small |d| almost
unchanged, so exp only ever sees [−r, r]. Values are kept O(1) on ciphertexts: stage i works on
v = d/R_i, where B_{R_i} becomes v ↦ L·b(v) with b(v) = v − 4v³/27 (b maps [−2, 2] into [−1, 1]).
The input is y = d/(2·Rmax) ∈ [−1, 1] and the output w = d/r ∈ [−1, 1], both O(1) on ciphertexts
(HETAL.md §4 pitfall 6: wide values near level 0 would wrap; here none is wider than 2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np

from ..ckks.evaluator import Cipher, Evaluator
from .polynomial import EnsureFn, Polynomial

SOURCE = ("HETAL (Lee et al., ICML 2023) Algorithm 1, domain extension of Cheon et al. 2022; "
          "HETAL.md §4 step 3")


@dataclass(frozen=True)
class DomainExtension:
    """n steps of B_R, optionally followed by HETAL's precise correction w + κw³ − κw⁵.

    Contract (proved on a grid by the tests): for y ∈ [−1, 1] the output w stays in [−1, 1], and
    on the softmax's side of the domain, d = 2·Rmax·y ∈ [−2·Rmax, 0], ``max_error`` bounds
    |e^{r·w} − e^{d}|, the error exp inherits (HETAL.md §4 pitfall 4).
    """

    steps: int = 5
    base_radius: float = 8.0
    ratio: float = 2.0
    precise: bool = False

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"domain extension steps must be ≥ 0, got {self.steps}")
        if not 1.0 < self.ratio <= 2.0:
            # L·b(v) stays in [−2, 2] only for L ≤ 2: the next stage's domain.
            raise ValueError(f"extension ratio L must be in (1, 2], got {self.ratio}")

    source = SOURCE

    @property
    def radius(self) -> float:
        """Rmax = (r/2)·L^n: logits in [−Rmax, Rmax] give d = x − max ∈ [−2·Rmax, 0]."""
        return self.base_radius / 2 * self.ratio**self.steps

    @property
    def domain(self) -> tuple[float, float]:
        """Of d (before normalization): [−2·Rmax, 2·Rmax]."""
        return (-2 * self.radius, 2 * self.radius)

    @property
    def kappa(self) -> float:
        """κ = (4/27)(L^{2n} − 1)/(L^{2n−2}(L² − 1)) ≈ 0.19734 for L = 2, n = 5."""
        n, L = self.steps, self.ratio
        return 4 / 27 * (L ** (2 * n) - 1) / (L ** (2 * n - 2) * (L * L - 1))

    @property
    def depth(self) -> int:
        return sum(p.depth for p in self.polynomials)

    @property
    def polynomials(self) -> list[Polynomial]:
        """The stages as they run on ciphertexts: y ↦ … ↦ w (normalized units, see module doc)."""
        n, L = self.steps, self.ratio
        polys = []
        for i in reversed(range(n)):
            a = L if i > 0 else 1.0  # stage i outputs v_{i−1} = L·b(v_i); the last one w = b(v_0)
            R = self.base_radius * L**i
            p = Polynomial(f"B_{R:g}", (0.0, a, 0.0, -4 * a / 27), (-2.0, 2.0), 0.0,
                           "exact rescaling of B_R(x) = x − 4x³/(27R²)", self.source)
            polys.append(p.of_scaled(L) if i == n - 1 else p)  # v_{n−1} = d/R_{n−1} = L·y
        if self.precise and n > 0:
            k = self.kappa
            polys.append(Polynomial("precise", (0.0, 1.0, 0.0, k, 0.0, -k), (-1.0, 1.0), 0.0,
                                    f"d + (κ/r²)d³ − (κ/r⁴)d⁵ with κ = {k:.5f}, in units of r", self.source))
        return polys

    def __call__(self, y: np.ndarray) -> np.ndarray:
        """w = B(d)/r for y = d/(2·Rmax)."""
        w = np.asarray(y, dtype=np.float64)
        if not self.polynomials:
            return w * (2 * self.radius / self.base_radius)
        for p in self.polynomials:
            w = p(w)
        return w

    def extend(self, d: np.ndarray) -> np.ndarray:
        """The same map on raw d: B_{R_0}(…B_{R_{n−1}}(d)) (plus the correction)."""
        return self.base_radius * self(np.asarray(d, dtype=np.float64) / (2 * self.radius))

    @cached_property
    def max_error(self) -> float:
        """sup over d ∈ [−2·Rmax, 0] of |e^{B(d)} − e^d|, on a grid of 4·10⁶ points, rounded up."""
        d = np.linspace(-2 * self.radius, 0.0, 4_000_001)
        return float(np.max(np.abs(np.exp(self.extend(d)) - np.exp(d))) * 1.01 + 1e-15)

    error_of = "|exp(B(d)) − exp(d)| for d ∈ [−2·Rmax, 0]"

    def exp_polynomial(self) -> Polynomial:
        """q with q(w)^8 ≈ e^d for w = B(d)/8: exp with this extension's distortion undone (ours).

        See ``fit_exp_after_extension``; without extension steps it is HETAL's p8.
        """
        return fit_exp_after_extension(self.steps, self.base_radius, self.ratio, self.precise)

    def evaluate(self, ev: Evaluator, ys: Sequence[Cipher], ensure: EnsureFn) -> list[Cipher]:
        """w for each cipher of ``ys`` (which must hold y = d/(2·Rmax)); 2 levels per step."""
        if not self.polynomials and self.radius * 2 != self.base_radius:
            raise ValueError("no extension steps: y already is w only when 2·Rmax = r")
        ws = list(ys)
        for p in self.polynomials:
            ws = p.evaluate_all(ev, ws, ensure, f"softmax domain extension ({p.name})")
        return ws


FIT_HIGH = 6.0  # the fit covers d ≤ 6: the approximate max undershoots the true one by less
REFIT_SOURCE = "this work: exp refitted after HETAL's domain extension (weighted least squares, Lawson)"
REFIT_ERROR_OF = "|q(B(d)/8)^8 − e^d| / max(1, e^d) for d ∈ [−2·Rmax, 6]"

#: ``fit_exp_after_extension(5)`` (Rmax = 128), kept as data; the tests re-derive and re-prove it.
Q8_R128 = Polynomial(
    "q8[5]",
    (1.0000092046293314, 1.0001914518857447, 0.49772746342538565, 0.35944873713608283, 0.28874949352938223,
     0.20068541359773595, -0.11393797687767634, 0.2316601355080263, 0.4955040014707717),
    (-1.0, 1.0), 4.962e-4, REFIT_ERROR_OF, REFIT_SOURCE)


def fit_exp_after_extension(steps: int, base_radius: float = 8.0, ratio: float = 2.0,
                            precise: bool = False) -> Polynomial:
    """Degree-8 q with q(B(d)/8)^8 ≈ e^d on d ∈ [−2·Rmax, 6]: exp absorbs the extension's distortion.

    HETAL's p8 approximates e^t, but the extension has already moved d (−4 → −3.81, and every
    d ≤ −8 to ≈ −7), which is where the softmax's error comes from (HETAL.md §4 pitfall 4). Fitting
    q to e^{d/8} as a function of w = B(d)/8 undoes the move for d ∈ [−8, 6] and maps every
    d ≤ −8 to ≤ e^−8, at the same depth (degree 8, 4 levels). Lawson's iteratively reweighted least
    squares on a grid minimizes max |q(w)^8 − e^d| / max(1, e^d) (the 8th power linearized:
    δ(q^8) ≈ 8·q^7·δq). Deterministic; the contract is re-proved by the tests on a finer grid.
    """
    if steps == 0:
        from .exp import P8

        return P8
    if (steps, base_radius, ratio, precise) == (5, 8.0, 2.0, False):
        return Q8_R128
    return _fit(steps, base_radius, ratio, precise)


@lru_cache(maxsize=16)
def _fit(steps: int, base_radius: float, ratio: float, precise: bool) -> Polynomial:
    ext = DomainExtension(steps, base_radius, ratio, precise)
    d = np.concatenate([np.linspace(-2 * ext.radius, -16.0, 2_001), np.linspace(-16.0, FIT_HIGH, 6_001)])
    w = ext.extend(d) / base_radius
    target = np.exp(d / 8)
    sens = 8 * np.exp(7 * d / 8) / np.maximum(1.0, np.exp(d))
    basis = np.polynomial.chebyshev.chebvander(w, 8)  # well conditioned on [−1, 1]
    weights = np.ones_like(d)
    for _ in range(60):
        sw = weights * sens * sens
        cheb = np.linalg.solve(basis.T @ (basis * sw[:, None]), basis.T @ (target * sw))
        err = np.abs(basis @ cheb - target) * sens
        weights *= err / err.max() + 1e-3
        weights /= weights.sum()
    coeffs = np.polynomial.chebyshev.cheb2poly(cheb)
    q = Polynomial("q8", tuple(float(c) for c in coeffs), (-1.0, 1.0), 0.0, "", "")
    d = np.linspace(-2 * ext.radius, FIT_HIGH, 400_001)
    approx = np.maximum(q(ext.extend(d) / base_radius), 0.0) ** 8
    error = float(np.max(np.abs(approx - np.exp(d)) / np.maximum(1.0, np.exp(d))))
    return Polynomial(f"q8[{steps}{'+precise' if precise else ''}]", q.coefficients, (-1.0, 1.0),
                      round(error, 7), REFIT_ERROR_OF, REFIT_SOURCE)
