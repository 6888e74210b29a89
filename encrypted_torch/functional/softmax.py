"""Row-wise approximate softmax of encrypted logits (HETAL.md §4), with refreshes planned and counted.

The logits are horizontally tiled (HETAL.md §2): slot (r, t) of a block row holds class t mod c_pad,
repeated s1/c_pad times per row; padded classes and rows are zero. Each block row is one cipher and
runs through the same stages; ``ensure_levels`` gives each stage the levels it needs right before
it, refreshing only the ciphers that continue and only when they lack a level: as late as possible.
At two junctions, where one value feeds two paths, a refresh of the shared value can save a later
one; the plan (``plan.py``) runs each ``RefreshPolicy`` dry and the softmax runs the one with the
fewest refreshes. The block rows of one process are refreshed in the same round trip; with worker
processes (``parallel``) each worker takes a share of the block rows and asks this process for its
refreshes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from .. import parallel
from ..approx.softmax import SoftmaxConfig
from ..ckks.evaluator import Cipher, Evaluator
from ..errors import DomainError, ShapeError
from ..linalg.steps import softmax_steps
from ..refresh import ensure_levels
from ..tensor.enctensor import EncTensor
from ..tensor.layout import BlockLayout
from . import packing

WORK_PER_CIPHER = 100
"""The softmax of one block row costs about as much as this many block products (≥ 100 ct·ct
multiplications and their relinearizations at high levels): worth a worker of its own."""

__all__ = ["RefreshPolicy", "SoftmaxConfig", "run_softmax", "softmax", "softmax_ciphers",
           "softmax_rotation_steps"]


def softmax_rotation_steps(unit: tuple[int, int], c_pad: int) -> list[int]:
    """The rotations the softmax uses (``linalg.steps.softmax_steps``). Pass them to
    ``SecretContext.create(rotations=...)``."""
    return softmax_steps(unit, c_pad)


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
def _masks(layout: BlockLayout) -> dict[str, np.ndarray]:
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
    """max ≈ s/2 + d·h (s = a + b, d = a − b, h = sign(d)/2); s/2 lands on the product's scale."""
    prod = ev.mul(d, h)
    return ev.add(ev.mul_plain(ev.mod_switch(s, prod.level + 1), 0.5, out_scale=prod.scale), prod)


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
        if moved is not None:
            return ev.add(ev.mul_plain(z, -k * good), ev.mul_plain(moved, k * (good - 1.0)))
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
    masks = _masks(layout) if masks is None else masks
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


def check_domain(logits: EncTensor, config: SoftmaxConfig, input_scale: float = 1.0) -> None:
    """On the plaintext backend in checked mode, raise DomainError for logits outside the domain.

    It reads the slot values the plaintext backend holds in the clear (no decryption). Under CKKS
    nothing can check: out-of-domain logits give wrong probabilities silently (docs/softmax.md).
    """
    backend = logits.ctx.backend
    if getattr(backend, "name", None) != "plain" or not getattr(backend, "checked", False):
        return
    valid = logits.layout.valid_mask()[:, 0, :] > 0
    values = np.stack([np.real(row[0].handle) for row in logits.blocks]) / input_scale
    peak = float(np.max(np.abs(values[valid]))) if valid.any() else 0.0
    if not peak <= config.domain_radius:
        raise DomainError(
            f"softmax: a logit of magnitude {peak:.4g} lies outside the domain [−{config.domain_radius:g}, "
            f"{config.domain_radius:g}] of SoftmaxConfig(domain_radius={config.domain_radius:g}); "
            "under CKKS the result would be silently wrong. Pick a wider domain_radius or scale the logits")


def _check_layout(logits: Any, op: str) -> None:
    if not isinstance(logits, EncTensor):
        raise TypeError(f"{op} expects an EncTensor, got {type(logits).__name__}")
    if logits.layout.tiling != "horizontal":
        raise ShapeError(f"{op} works on horizontally tiled logits (batch × classes, as DiagABT "
                         f"returns them); got a {logits.layout.describe()} tensor")
    if logits.shape[1] < 2:
        raise ShapeError(f"{op} needs at least 2 classes, got {logits.shape[1]}")


def run_softmax(logits: EncTensor, config: SoftmaxConfig, *, input_scale: float = 1.0,
                output_scale: float = 1.0) -> EncTensor:
    """output_scale·softmax(logits) with the refresh policy its plan found best (plans are cached)."""
    from .plan import plan_softmax

    ev, layout = logits.ctx.evaluator, logits.layout
    ciphers = [row[0] for row in logits.blocks]
    packed = packing.copies(layout) > 1
    if packed:  # g block rows per ciphertext: the softmax runs on n_a/g of them
        ciphers = packing.pack(ev, ciphers, layout, "softmax (pack block rows)")
        layout, masks = packing.packed_layout(logits.layout), packing.packed_masks(logits.layout)
    else:
        masks = _masks(layout)
    plan = plan_softmax(config, tuple(layout.shape), logits.ctx, unit=layout.unit,
                        input_level=min(c.level for c in ciphers), input_scale=input_scale)

    def rows(share: list[int]) -> list[Cipher]:
        return softmax_ciphers(ev, [ciphers[i] for i in share], layout, config, input_scale=input_scale,
                               output_scale=output_scale, policy=plan.policy,
                               masks={k: v[share] for k, v in masks.items()})

    # Block rows are independent: worker processes take a share each and this process serves their
    # refreshes (the key owner's link stays here).
    shares = parallel.plan(list(range(len(ciphers))), work=WORK_PER_CIPHER * len(ciphers))
    out = [c for part in parallel.fork_map(logits.ctx, rows, shares, serve_refreshes=True) for c in part]
    if packed:
        out = packing.unpack(ev, out, logits.layout, "softmax (unpack block rows)")
    return logits._new([[p] for p in out])


def softmax(logits: EncTensor, dim: int = -1, *, config: SoftmaxConfig | None = None,
            input_scale: float = 1.0) -> EncTensor:
    """Approximate softmax over classes (dim 1) of horizontally tiled encrypted logits.

    ``config.depth(c)`` levels, refreshed through the active Refresher (``refresh_with``) where
    the ciphertexts run out; DepthError without one. ``input_scale``: the tensor holds
    input_scale·logits (HETAL folds 1/(2·Rmax) = config.normalizer into DiagABT's masks; that saves
    the normalization level). No autograd: use ``cross_entropy`` for training.

    >>> with refresh_with(secret_ctx):                          # doctest: +SKIP
    ...     p = softmax(logits, config=SoftmaxConfig.narrow())
    """
    if dim not in (1, -1):
        raise ShapeError(f"the encrypted softmax is row-wise (dim=1); got dim={dim}")
    _check_layout(logits, "softmax")
    config = config or SoftmaxConfig()
    check_domain(logits, config, input_scale)
    return run_softmax(logits, config, input_scale=input_scale)
