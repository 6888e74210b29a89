"""Domain guard: the largest |value| each refreshed stage of the softmax holds in an honest run.

SEAL cannot bootstrap, so the key owner decrypts every ciphertext it refreshes, and every refresh
names its stage (``refresh.ensure_levels``' op). ``stage_bounds`` derives from the config alone
(the approximations' contracts: domains, output ranges, max errors) what each stage can hold when
the logits lie in [−Rmax, Rmax]; ``StageBounds.check`` raises DomainError beyond that. Out-of-domain
logits then stop training instead of giving a silently wrong model (docs/softmax.md §5: past ≈ 5 %
beyond Rmax, CKKS returns arbitrary numbers and raises nothing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..approx.polynomial import Polynomial
from ..approx.softmax import SoftmaxConfig
from ..ckks.params import PRESETS, CKKSParams, get_params
from ..errors import DomainError

REL_MARGIN = 1 / 32
"""Relative slack on every bound: CKKS noise between refreshes is ~1e-6 on O(1) values
(``ckks_tolerance``) and grid maxima may miss a polynomial's peak by far less than this; 3 % keeps
the guard quiet on honest runs, while logits 5 % past Rmax (where the max starts to fail) trip it."""
ABS_MARGIN = 1e-3
"""Absolute slack, for stages whose exact bound is near 0 (CKKS noise does not scale with them)."""
GRID = 20_001


def representable_bound(params: CKKSParams | str | None = None) -> float:
    """The largest |value| a ciphertext holds at level 0 without wrapping modulo q0:
    2^(bits(q0) − scale_bits − 1) (256 on 'test', 2^19 on 'fast'). None: the smallest over the
    presets. A refresh happens where a cipher runs out of levels, so level 0's room is what counts."""
    if params is None:
        return min(p.max_abs_value for p in PRESETS.values())
    return get_params(params).max_abs_value


@dataclass(frozen=True)
class Bound:
    """The largest |slot value| of a stage (margin included); ``logit_unit``: slot value per logit
    when the stage carries the (scaled) logits themselves, else None."""

    limit: float
    logit_unit: float | None = None


@dataclass(frozen=True)
class StageBounds:
    """Bounds per stage (``ensure_levels`` op name) for one config, class count and scales.

    Each bound holds for every slot of an honest run, padding included (padded classes hold −½ in
    normalized units, padded rows 0, tiled copies the row's values), so the key owner may check
    whole decrypted vectors; ``valid`` narrows the check to some slots if the caller wishes.
    Stages not listed (products, the optimizer's "refresh", …) get ``generic``: finite and within
    ``representable_bound``.
    """

    config: SoftmaxConfig
    classes: int
    stages: dict[str, Bound] = field(default_factory=dict)
    generic: float = field(default_factory=representable_bound)

    @property
    def logit_stages(self) -> frozenset[str]:
        """The stages that carry the (scaled) logits themselves: the first refreshes of the input."""
        return frozenset(s for s, b in self.stages.items() if b.logit_unit is not None)

    def bound(self, stage: str) -> float:
        b = self.stages.get(stage)
        return self.generic if b is None else b.limit

    def check(self, stage: str, values: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Raise DomainError if a (decrypted) value of ``stage`` is non-finite or beyond its bound
        (``valid``: a mask of the slots to bound; non-finite values fail in any slot)."""
        v = np.asarray(values)
        if not np.all(np.isfinite(v)):  # in any slot, masked or not: nothing honest produces them
            raise DomainError(self._message(stage, math.inf, self.bound(stage)))
        if valid is not None:
            v = v[np.broadcast_to(np.asarray(valid, dtype=bool), v.shape)]
        if v.size == 0:
            return
        peak = float(np.max(np.abs(v)))
        limit = self.bound(stage)
        if peak <= limit:
            return
        raise DomainError(self._message(stage, peak, limit))

    def _message(self, stage: str, peak: float, limit: float) -> str:
        cfg, b = self.config, self.stages.get(stage)
        seen = "non-finite values" if math.isinf(peak) else f"a value of magnitude {peak:.4g}"
        if b is None:
            return (f"{stage}: {seen} at a refresh, beyond ±{limit:.4g}, what CKKS holds at this scale "
                    "without wrapping; lower the learning rate or normalise the features")
        radius = 2 * cfg.domain_radius
        where = ""
        if b.logit_unit is not None and math.isfinite(peak):
            logit = peak / b.logit_unit
            radius = max(radius, 4.0 * 2 ** math.ceil(math.log2(max(logit, 4.0) / 4.0)))
            where = f" (logits up to ±{logit:.4g})"
        return (f"{stage}: {seen}{where} at a refresh; an honest run of SoftmaxConfig "
                f"{cfg.name!r} (logits in [−{cfg.domain_radius:g}, {cfg.domain_radius:g}], "
                f"{self.classes} classes) holds at most {limit:.4g} there, and past its domain the "
                "softmax is silently wrong under CKKS. Lower the learning rate, normalise the features, "
                f"or use a wider config, e.g. SoftmaxConfig(domain_radius={radius:g}) "
                f"({SoftmaxConfig(domain_radius=radius).depth(self.classes)} levels against "
                f"{cfg.depth(self.classes)})")


def _image(poly: Polynomial, lo: float, hi: float) -> tuple[float, float]:
    """[min, max] of ``poly`` on [lo, hi], on a grid (the margin covers what falls between points)."""
    y = poly(np.linspace(lo, hi, GRID))
    return float(y.min()), float(y.max())


def _mag(interval: tuple[float, float]) -> float:
    return max(abs(interval[0]), abs(interval[1]))


def stage_bounds(config: SoftmaxConfig, classes: int, input_scale: float = 1.0, output_scale: float = 1.0,
                 params: CKKSParams | str | None = None) -> StageBounds:
    """Every stage ``softmax``/``cross_entropy`` (forward and backward) may refresh with ``config`` on
    ``classes`` classes, with the largest |value| it holds when the logits (``input_scale``·x in the
    ciphertexts) lie in [−Rmax, Rmax], and the probabilities come out as ``output_scale``·P
    (``cross_entropy``: 1/batch for ``reduction="mean"``; 1 is a looser bound that holds for both).
    ``params``: the CKKS parameters, for the generic bound of other stages (None: the smallest preset's).

    Derivation (normalized units u = x/(2·Rmax) ∈ [−½, ½]; docs/softmax.md §1–2): the max≈ is a convex
    combination (comp ∈ [0, 1]), so it stays in [−½, ½] and falls at most rounds·δ short, hence
    y = u − max≈ ∈ [−1, rounds·δ] (without the max y = u); each polynomial's image is taken on its
    input interval; e' = mask·q(w)^8/R; the row sum z = Σ ê lies in the inverse's domain
    [lower, 2R − lower] (the config's validity condition, see ``SoftmaxConfig.error_bound``), so
    |t| = |1 − z/R| < 1; the running product σ_out·(ê/ẑ)·(1 − t^(2^k)) ∈ [0, σ_out].

    >>> b = stage_bounds(SoftmaxConfig(), 10)
    >>> b.bound("softmax max (round input)") < 0.52, b.stages["softmax normalize"].logit_unit
    (True, 1.0)
    """
    c, rmax, k = classes, config.domain_radius, config.normalizer
    raw: dict[str, float] = {}
    logits: dict[str, float] = {}

    def put(stage: str, value: float, unit: float | None = None) -> None:
        raw[stage] = max(raw.get(stage, 0.0), value)
        if unit is not None:
            logits[stage] = unit

    put("softmax (pack block rows)", input_scale * rmax, input_scale)
    if k != input_scale:
        put("softmax normalize", input_scale * rmax, input_scale)
    if config.subtract_max:
        put("softmax max (round input)", 0.5, k)  # u in round 0, the running max∈[−½, ½] after
        span = (-1.0, 1.0)  # differences of two values in [−½, ½]
        for p in config.comparison.cipher_polynomials(1.0, 0.5):
            put(f"softmax max ({p.name})", _mag(span))
            span = _image(p, *span)
        put("softmax max (update)", _mag(span))
        put("softmax max (spread)", 0.5)
        ys = (-1.0, config.rounds(c) * config.comparison.max_error)
    else:
        ys = (-0.5, 0.5)
    first_poly = not config.subtract_max  # y = u: the first polynomial's input is the logits
    for p in config.extension.polynomials:
        put(f"softmax domain extension ({p.name})", _mag(ys), k if first_poly else None)
        ys, first_poly = _image(p, *ys), False
    exp, inverse = config.exp, config.inverse(c)
    q = exp.poly
    put("softmax exp (p8)", _mag(ys), k if first_poly else None)
    if q.degree & (q.degree - 1) == 0:  # split on shallow presets: w^m refreshed alone
        put(f"softmax exp (p8) (x^{q.degree})", _mag(ys) ** q.degree)
    powers = 2**exp.squarings
    e_max = _mag(_image(q, *ys)) ** powers / inverse.radius  # e' = mask·q(w)^8/R, mask ∈ {0, 1}
    put("softmax exp (squaring)", max(e_max ** (2**j / powers) for j in range(exp.squarings)))
    put("softmax row sum", e_max)
    z_lo, z_hi = inverse.domain[0], min(c * e_max * inverse.radius, inverse.domain[1])
    t_lo, t_hi = 1 - z_hi / inverse.radius, 1 - z_lo / inverse.radius  # padded rows: t = 0
    put("softmax inverse (first product)", max(output_scale * max(1 + t_hi, abs(1 + t_lo), 1.0), e_max))
    put("softmax inverse (square)", max(abs(t_lo), abs(t_hi)))
    put("softmax inverse (product)", max(max(t_lo**2, t_hi**2), output_scale))
    put("softmax (unpack block rows)", output_scale)
    put("cross_entropy backward (targets)", 1.0)  # one-hot targets
    put("cross_entropy backward (scale)", output_scale)
    stages = {s: Bound(v * (1 + REL_MARGIN) + ABS_MARGIN, logits.get(s)) for s, v in raw.items()}
    return StageBounds(config, c, stages, representable_bound(params))
