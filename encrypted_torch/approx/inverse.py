"""Goldschmidt's inverse: 1/z ≈ (1/R)·Π_{i=0..n}(1 + t^(2^i)) with t = 1 − z/R (HETAL.md §4 step 6).

Exactly, z·(1/R)·Π(1 + t^(2^i)) = 1 − t^(2^(n+1)), so on [z_lo, 2R − z_lo] the relative error is at
most (1 − z_lo/R)^(2^(n+1)). It diverges for z ≥ 2R and is poor for z near 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..ckks.evaluator import Cipher, Evaluator
from .polynomial import EnsureFn

SOURCE = "Goldschmidt division as in HETAL (Lee et al., ICML 2023) Algorithm 1; HETAL.md §4 step 6"


@dataclass(frozen=True)
class GoldschmidtInverse:
    """1/z on [lower, 2·radius − lower] in ``iterations`` squarings; relative error ≤ ``max_error``.

    ``lower`` is the smallest z the caller guarantees (the softmax: 1, since the approximate max
    never exceeds the true one, so the largest term is e^{≥0}).
    """

    radius: float = 100.0
    iterations: int = 11
    lower: float = 1.0

    def __post_init__(self) -> None:
        if self.radius <= 0 or self.iterations < 0 or not 0 < self.lower < self.radius:
            raise ValueError(f"inverse needs radius > lower > 0 and iterations ≥ 0: {self}")

    source = SOURCE
    error_of = "|z·inv(z) − 1| (relative)"

    @property
    def domain(self) -> tuple[float, float]:
        return (self.lower, 2 * self.radius - self.lower)

    @property
    def max_error(self) -> float:
        return float((1 - self.lower / self.radius) ** (2 ** (self.iterations + 1)))

    @property
    def depth(self) -> int:
        """Levels from z: 1 (t = 1 − z/R) + n squarings + 1 (the products lag t by one level).

        Fused with a numerator (the softmax's e·1/z) the same n + 2 levels include that product.
        """
        return self.iterations + 2

    def __call__(self, z: np.ndarray) -> np.ndarray:
        t = 1 - np.asarray(z, dtype=np.float64) / self.radius
        y = 1 + t
        for _ in range(self.iterations):
            t = t * t
            y = y * (1 + t)
        return y / self.radius

    def evaluate(self, ev: Evaluator, zs: Sequence[Cipher], ensure: EnsureFn,
                 numerators: Sequence[Cipher] | None = None) -> list[Cipher]:
        """numerator/z (1/z without numerators) for each cipher of ``zs``, in n + 2 levels."""
        zs = ensure(list(zs), 1, "inverse (1 − z/R)")
        ts = [ev.add_plain(ev.mul_plain(z, -1 / self.radius), 1.0) for z in zs]
        # (1 + t)/R = 2/R − z/R² on t's level and scale: the first factor with 1/R folded in.
        ps = [ev.add_plain(ev.mul_plain(z, -1 / self.radius**2, out_scale=t.scale), 2 / self.radius)
              for z, t in zip(zs, ts, strict=True)]
        if numerators is not None:
            both = ensure(ps + list(numerators), 1, "inverse (numerator)")
            ps = [ev.mul(n, p) for p, n in zip(both[: len(ps)], both[len(ps):], strict=True)]
        return self.iterate(ev, ts, ps, ensure)

    def iterate(self, ev: Evaluator, ts: Sequence[Cipher], ps: Sequence[Cipher],
                ensure: EnsureFn) -> list[Cipher]:
        """p·Π_{i=1..n}(1 + t^(2^i)) from t = 1 − z/R and p (which holds the i = 0 factor already).

        ``ensure`` keeps t and the running product alive, refreshing each only when the next
        operation needs a level it lacks (as late as possible: at most one of each per round trip).
        """
        k = len(ts)
        ts, ps = list(ts), list(ps)
        for _ in range(self.iterations):
            ts = ensure(ts, 1, "softmax inverse (square)")
            ts = [ev.square(t) for t in ts]
            both = ensure(ts + ps, 1, "softmax inverse (product)")
            ts, ps = both[:k], both[k:]
            ps = [ev.mul(p, ev.add_plain(t, 1.0)) for p, t in zip(ps, ts, strict=True)]
        return ps
