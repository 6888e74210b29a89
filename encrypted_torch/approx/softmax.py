"""HETAL's approximate softmax as a configuration of approximations, with its numpy reference model.

Pipeline (HETAL.md §4): normalize u = x/(2·Rmax); row max by a tournament of approximate maxes;
y = u − max; domain extension to w = d/8 ∈ [−1, 1]; e = p8(w)^8 with padded classes zeroed; row
sum z; Goldschmidt inverse; P = e/z. ``SoftmaxConfig.reference`` runs exactly this on numpy, with
the same tournament order as the ciphertexts (a single shift per row: the tile's column 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TypeVar

import numpy as np

from .comparison import Comparison
from .exp import P8, Exp
from .extension import FIT_HIGH, DomainExtension
from .inverse import GoldschmidtInverse

BASE_RADIUS = 8.0  # r: exp's input domain is [−r, r] (p8 on [−1, 1], then 3 squarings)
RATIO = 2.0  # L: each extension step doubles the domain


T = TypeVar("T")

#: The names ``SoftmaxConfig.preset`` takes (a job's ``softmax`` field, ``--softmax``).
SOFTMAX_PRESETS = ("default", "hetal", "hetal-n11", "hetal-precise", "narrow")


@lru_cache(maxsize=64)
def _shared(cls: type[T], *args: object) -> T:
    """One instance per parameter set, so each contract (a grid measurement) is computed once."""
    return cls(*args)


def next_pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, n))))


@dataclass(frozen=True)
class SoftmaxConfig:
    """Parameters of the approximate softmax: HETAL's, with n = 11 (HETAL.md §4 pitfall 5) and, by
    default, exp refitted after the domain extension (ours: no level, about 5× less error).

    - ``domain_radius`` Rmax: logits must lie in [−Rmax, Rmax]; 4·2^k, k = number of extension steps.
    - ``compare_f``, ``compare_g``: df, dg of the composite comparison (HETAL's benchmark: 1, 2).
    - ``inverse_radius`` R, ``inverse_iterations`` n: Goldschmidt; valid for row sums z < 2R.
      HETAL uses R = 100, n = 16; n = 11 gives the same softmax error (its contract on
      z ∈ [0.5, 199.5]: relative error ≤ 0.995^4096 ≈ 1e-9) and saves 5 levels. ``None`` (only
      without the max): R = c·cosh(Rmax), the centre of the row sum's range [c·e^−Rmax, c·e^Rmax].
    - ``precise``: HETAL's precise correction after the extension (+3 levels, about half the error).
    - ``exp_refit`` (ours, 0 levels): exp's degree-8 polynomial refitted to undo the extension's
      distortion (``extension.fit_exp_after_extension``), about 5× less error than HETAL's p8,
      whose e^B(d) ≠ e^d is the softmax's main error (HETAL.md §4 pitfall 4). False: HETAL's p8.
    - ``subtract_max``: False skips the max (only for Rmax ≤ 4: z then spans e^±Rmax per class,
      which the inverse handles in a few more iterations instead of 10 levels per tournament round).

    >>> SoftmaxConfig().depth(10), SoftmaxConfig.hetal().depth(10), SoftmaxConfig.narrow().depth(10)
    (72, 77, 24)
    """

    domain_radius: float = 128.0
    compare_f: int = 1
    compare_g: int = 2
    inverse_radius: float | None = 100.0
    inverse_iterations: int = 11
    precise: bool = False
    subtract_max: bool = True
    exp_refit: bool = True
    name: str = field(default="default", compare=False)

    def __post_init__(self) -> None:
        steps = math.log2(self.domain_radius / (BASE_RADIUS / 2)) if self.domain_radius > 0 else -1.0
        if steps < 0 or steps != int(steps):
            raise ValueError(f"domain_radius must be 4·2^k (4, 8, …, 128, …), got {self.domain_radius}")
        if not self.subtract_max and self.domain_radius > BASE_RADIUS / 2:
            raise ValueError("subtract_max=False needs domain_radius ≤ 4: wider rows make the row sum "
                             f"span e^±{self.domain_radius:g}, beyond what the inverse resolves under "
                             "CKKS noise")
        if self.inverse_radius is None and self.subtract_max:
            raise ValueError("inverse_radius=None (automatic) only without the max")
        Comparison(self.compare_f, self.compare_g)

    @classmethod
    def hetal(cls) -> SoftmaxConfig:
        """Exactly HETAL's benchmark: Rmax = 128, df/dg = 1/2, R = 100, n = 16, HETAL's p8."""
        return cls(inverse_iterations=16, exp_refit=False, name="hetal")

    @classmethod
    def hetal_n11(cls) -> SoftmaxConfig:
        """HETAL's algorithm and constants with n = 11 (HETAL.md §4 pitfall 5): 5 levels fewer."""
        return cls(exp_refit=False, name="hetal-n11")

    @classmethod
    def precise_wide(cls) -> SoftmaxConfig:
        """HETAL's precise variant (n = 11): the correction d + (κ/r²)d³ − (κ/r⁴)d⁵, +3 levels."""
        return cls(precise=True, exp_refit=False, name="hetal-precise")

    @classmethod
    def narrow(cls) -> SoftmaxConfig:
        """Logits in [−4, 4]: no max, no extension, exp then an inverse over z/c ∈ [e^−4, e^4].

        R = c·cosh 4 centres the inverse; its error tanh(4)^(2^15) ≈ 3e-10 with n = 14.
        """
        return cls(domain_radius=4.0, subtract_max=False, inverse_radius=None, inverse_iterations=14,
                   name="narrow")

    @classmethod
    def preset(cls, name: str) -> SoftmaxConfig:
        """The configuration named ``name`` (one of ``SOFTMAX_PRESETS``)."""
        presets = {"default": cls, "hetal": cls.hetal, "hetal-n11": cls.hetal_n11,
                   "hetal-precise": cls.precise_wide, "narrow": cls.narrow}
        if name not in presets:
            raise ValueError(f"unknown softmax preset {name!r}; choose one of {sorted(presets)}")
        return presets[name]()

    @property
    def extension_steps(self) -> int:
        return round(math.log2(self.domain_radius / (BASE_RADIUS / 2)))

    @property
    def normalizer(self) -> float:
        """1/(2·Rmax): u = normalizer·x ∈ [−½, ½]. HETAL folds it into DiagABT's masks."""
        return 1 / (2 * self.domain_radius)

    @property
    def comparison(self) -> Comparison:
        return _shared(Comparison, self.compare_f, self.compare_g)

    @property
    def extension(self) -> DomainExtension:
        return _shared(DomainExtension, self.extension_steps, BASE_RADIUS, RATIO, self.precise)

    @property
    def exp(self) -> Exp:
        poly = self.extension.exp_polynomial() if self.exp_refit else P8
        return _shared(Exp, 3, poly)

    def inverse(self, classes: int) -> GoldschmidtInverse:
        """The inverse for rows of ``classes`` classes (its radius is automatic without the max)."""
        if self.subtract_max:
            # z ≥ e^(d_top) ≥ 1 up to exp's error: the max never exceeds the true max.
            return GoldschmidtInverse(float(self.inverse_radius), self.inverse_iterations, 0.5)
        r = self.domain_radius
        radius = classes * math.cosh(r) if self.inverse_radius is None else self.inverse_radius
        lower = classes * math.exp(-r) * (1 - self.exp.max_error)
        return GoldschmidtInverse(radius, self.inverse_iterations, lower)

    def max_shortfall(self, classes: int) -> float:
        """Bound on true max − approximate max, in logits: rounds·δ·2·Rmax (each round's max≈ is
        within δ of the exact max of its inputs, which are themselves within (r−1)·δ)."""
        return self.rounds(classes) * self.comparison.max_error * 2 * self.domain_radius

    def error_bound(self, classes: int) -> float | None:
        """Max |P≈ − P| over all logits in the domain, from the component contracts (docs/softmax.md).

        With a max and the refitted exp (|ê − e^d| ≤ ε·max(1, e^d) for d ∈ [−2·Rmax, 6]):
        (ε(c + 3) + ε_inv(1 + ε)) / (1 − ε(c + 1)), valid while the shortfall stays ≤ 6 logits and
        the row sum z < 2R (an adversarial search finds z ≤ 186 < 200 for c ≤ 16). Without the
        max (relative exp error ε): (2ε + ε_inv)/(1 − ε). None for HETAL's p8 after the extension,
        which moves d by up to 33% for the top class when the max falls short (no useful bound:
        docs/softmax.md gives the worst cases an adversarial search found instead).
        """
        eps, inv = self.exp.max_error, self.inverse(classes).max_error
        if not self.subtract_max:
            return (2 * eps + inv) / (1 - eps)
        if not self.exp_refit and self.extension_steps > 0:
            return None
        if self.max_shortfall(classes) > FIT_HIGH or next_pow2(classes) > 16:
            return None
        return (eps * (classes + 3) + inv * (1 + eps)) / (1 - eps * (classes + 1))

    def rounds(self, classes: int) -> int:
        return int(math.log2(next_pow2(classes))) if self.subtract_max else 0

    def levels(self, classes: int, prescaled: bool = False) -> dict[str, int]:
        """Levels of each stage along the critical path (one block row; all block rows alike)."""
        return {
            "normalize": 0 if prescaled else 1,
            "max": self.rounds(classes) * (self.comparison.depth + 1),
            "spread max": 1 if self.subtract_max else 0,
            "extension": self.extension.depth,
            "exp": self.exp.depth,
            "row sum": 1,
            "inverse + product": self.inverse_iterations + 1,
        }

    def depth(self, classes: int, prescaled: bool = False) -> int:
        """Levels the softmax consumes on ``classes`` classes; ``prescaled``: the logits already
        hold x/(2·Rmax) (HETAL folds it into DiagABT's masks), which saves the first level."""
        return sum(self.levels(classes, prescaled).values())

    def reference(self, logits: np.ndarray) -> np.ndarray:
        """The approximate softmax of each row of ``logits`` (rows × c), in float64."""
        x = np.asarray(logits, dtype=np.float64)
        rows, c = x.shape
        c_pad = next_pow2(c)
        u = np.full((rows, c_pad), -0.5)  # padded classes never win the max (pitfall 2)
        u[:, :c] = x * self.normalizer
        y = u
        if self.subtract_max:
            m = u
            for i in range(self.rounds(c)):
                m = self.comparison.max(m, np.roll(m, -(1 << i), axis=1))
            y = u - m[:, :1]  # one shift per row: column 0's tournament, as on ciphertexts
        e = self.exp(BASE_RADIUS * self.extension(y))
        e[:, c:] = 0.0  # padded classes stay out of the sum (pitfall 2)
        z = e.sum(axis=1, keepdims=True)
        return (e * self.inverse(c)(z))[:, :c]
