"""The softmax's stages on ciphertexts (HETAL.md §4), shared by ``softmax`` and its dry-run ``plan``.

The logits are horizontally tiled (HETAL.md §2): slot (r, t) of a block row holds class t mod c_pad,
repeated s1/c_pad times per row; padded classes and rows are zero. Each block row is one cipher and
runs through the same stages; ``ensure`` gives each stage the levels it needs right before it.
``softmax.py`` runs them on a context's ciphers, ``plan.py`` on a null backend to count them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from ..approx.softmax import SoftmaxConfig
from ..ckks.evaluator import Cipher, Evaluator
from ..refresh import ensure_levels
from ..tensor.layout import BlockLayout


@dataclass(frozen=True)
class RefreshPolicy:
    """Where to refresh at the two junctions (everywhere else: only a cipher short of a level, right
    before the stage that needs it). ``round_input``: levels the max's running value must have at
    each round (1: only what the update needs; 3: refresh it instead of its difference when the
    first comparison polynomial would refresh that, which gives the update's other factor the
    levels too). ``row_sum``: levels exp's output must have before the row sum (1, or 2 so that
    t = 1 − z/R can feed the first product without a refresh of its own)."""

    round_input: int = 1
    row_sum: int = 1


class Ensure:
    """``ensure_levels`` that also logs where it refreshed (op, ciphers), for plans and tests."""

    def __init__(self) -> None:
        self.log: list[tuple[str, int]] = []

    def __call__(self, ciphers: Sequence[Cipher], levels: int, op: str) -> list[Cipher]:
        short = sum(c.level < levels for c in ciphers)
        out = ensure_levels(ciphers, levels, op)
        if short:
            self.log.append((op, short))
        return out


@lru_cache(maxsize=32)
def slot_masks(layout: BlockLayout) -> dict[str, np.ndarray]:
    """Slot masks of a horizontal layout, each of shape (n_a, slots)."""
    rows, c = layout.shape
    s0, s1 = layout.unit
    c_pad = layout.c_pad
    n_a = layout.grid[0]
    col = np.tile(np.arange(s1), s0)
    row = np.arange(n_a)[:, None] * s0 + np.repeat(np.arange(s0), s1)[None, :]
    row_valid = (row < rows).astype(float)
    class_pad = np.broadcast_to(((col % c_pad) >= c).astype(float), (n_a, s0 * s1))
    return {
        "valid": layout.valid_mask()[:, 0, :],
        "row_valid": row_valid,
        "class_pad": class_pad,
        "tile0": np.broadcast_to((col % c_pad == 0).astype(float), (n_a, s0 * s1)),
        "good": np.broadcast_to((col <= s1 - c_pad).astype(float), (n_a, s0 * s1)),
    }


def _spread(ev: Evaluator, v: Cipher, c_pad: int) -> Cipher:
    """Copy column k·c_pad of every row to columns k·c_pad … k·c_pad + c_pad − 1 (row-local)."""
    for k in range(c_pad.bit_length() - 1):
        v = ev.add(v, ev.rotate(v, -(1 << k)))
    return v


def _max_update(ev: Evaluator, s: Cipher, d: Cipher, h: Cipher) -> Cipher:
    """max ≈ s/2 + d·h (s = a + b, d = a − b, h = sign(d)/2); s/2 lands on the product's scale and
    joins it before the rescale (one rescale for the sum)."""
    prod = ev.mul_raw(d, h)
    out_scale = prod.scale / ev.primes[prod.level]
    half = ev.mul_plain_raw(ev.mod_switch(s, prod.level), 0.5, out_scale=out_scale)
    return ev.finish(ev.add(prod, half), out_scale)


def _row_sum_factors(ev: Evaluator, e: Cipher, masks: dict[str, np.ndarray], i: int, s1: int,
                     c_pad: int, scale: float) -> tuple[Cipher, Cipher | None]:
    """t = 1 − Σ_row e (0 on padded rows) and, unless ``scale`` is 1, scale·(1 + t): 1 level.

    After the rotations, column t holds the sum over columns t … t + c_pad − 1: the row's sum only
    where t ≤ s1 − c_pad; the rest takes it from c_pad columns to the left (HETAL.md §4 pitfall 3),
    or, when a row is a single tile, column 0 is spread over it. The repair's masks carry the
    constants, so both factors come out of the same level. Padded rows get t = 0, so their
    inverse stays finite (their e is 0).
    """
    z = e
    for k in range(c_pad.bit_length() - 1):
        z = ev.add(z, ev.rotate(z, 1 << k))
    moved = ev.rotate(z, -c_pad) if s1 >= 2 * c_pad else None

    good = masks["good"][i]

    def minus_row_sum(k: float) -> Cipher:
        if moved is not None:  # both products at one level and scale: one rescale for their sum
            delta = ev.params.scale
            return ev.rescale(ev.add(ev.mul_plain_raw(z, -k * good, delta),
                                     ev.mul_plain_raw(moved, k * (good - 1.0), delta)), delta)
        return _spread(ev, ev.mul_plain(z, -k * masks["tile0"][i]), c_pad)

    rv = masks["row_valid"][i]
    t = ev.add_plain(minus_row_sum(1.0), rv)
    return t, (None if scale == 1.0 else ev.add_plain(minus_row_sum(scale), scale * (1.0 + rv)))


def softmax_ciphers(ev: Evaluator, xs: Sequence[Cipher], layout: BlockLayout, config: SoftmaxConfig,
                    *, input_scale: float = 1.0, output_scale: float = 1.0,
                    ensure: Any = ensure_levels, policy: RefreshPolicy = RefreshPolicy(),
                    masks: dict[str, np.ndarray] | None = None) -> list[Cipher]:
    """output_scale·softmax of the block rows ``xs`` (holding input_scale·logits) of ``layout``;
    ``masks`` replace the layout's own slot masks (for packed block rows, ``packing.packed_masks``)."""
    c = layout.shape[1]
    c_pad, s1 = layout.c_pad, layout.s1
    masks = slot_masks(layout) if masks is None else masks
    n = len(xs)
    xs = list(xs)
    k = config.normalizer / input_scale
    if k != 1.0:
        xs = ensure(xs, 1, "softmax normalize")
        xs = [ev.mul_plain(x, k) for x in xs]
    # Padded classes at −1/2 in normalized units never win the max (HETAL.md §4 pitfall 2).
    us = [ev.add_plain(x, -0.5 * masks["class_pad"][i]) for i, x in enumerate(xs)]
    ys = us
    if config.subtract_max:
        ms = us
        for r in range(config.rounds(c)):
            ms = ensure(ms, policy.round_input, "softmax max (round input)")
            if r == 0:
                us = ms  # a refresh of the input also serves y = u − max below
            rots = [ev.rotate(m, 1 << r) for m in ms]
            diffs = [ev.sub(m, b) for m, b in zip(ms, rots, strict=True)]
            sums = [ev.add(m, b) for m, b in zip(ms, rots, strict=True)]
            hs = config.comparison.evaluate_half_sign(ev, diffs, ensure)
            hs = ensure(hs, 1, "softmax max (update)")
            ms = [_max_update(ev, s, d, h) for s, d, h in zip(sums, diffs, hs, strict=True)]
        ms = ensure(ms, 1, "softmax max (spread)")
        # One shift per row: column 0 of each tile (the same tournament tree) spread to its tile, so
        # softmax's shift invariance holds exactly; other columns' trees differ (max≈ is not associative).
        ys = [ev.sub(u, _spread(ev, ev.mul_plain(m, masks["tile0"][i], out_scale=u.scale), c_pad))
              for i, (u, m) in enumerate(zip(us, ms, strict=True))]
    ws = config.extension.evaluate(ev, ys, ensure)
    inverse = config.inverse(c)
    # e/R with padded classes and rows zeroed rides on p8's coefficients (no level).
    factors = [masks["valid"][i] / inverse.radius for i in range(n)]
    es = config.exp.evaluate(ev, ws, ensure, factors)
    es = ensure(es, policy.row_sum, "softmax row sum")
    pairs = [_row_sum_factors(ev, e, masks, i, s1, c_pad, output_scale) for i, e in enumerate(es)]
    ts = [t for t, _ in pairs]
    firsts = [ev.add_plain(t, 1.0) if w is None else w for t, w in pairs]
    both = ensure(firsts + es, 1, "softmax inverse (first product)")
    ps = [ev.mul(e, f) for f, e in zip(both[:n], both[n:], strict=True)]
    return inverse.iterate(ev, ts, ps, ensure)
