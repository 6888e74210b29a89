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

from typing import Any

import numpy as np

from .. import parallel
from ..approx.softmax import SoftmaxConfig
from ..ckks.evaluator import Cipher
from ..errors import DomainError, ShapeError
from ..linalg.steps import softmax_steps
from ..tensor.enctensor import EncTensor
from . import packing
from .plan import plan_softmax
from .softmax_core import Ensure, RefreshPolicy, slot_masks, softmax_ciphers

WORK_PER_CIPHER = 100
"""The softmax of one block row costs about as much as this many block products (≥ 100 ct·ct
multiplications and their relinearizations at high levels): worth a worker of its own."""

__all__ = ["Ensure", "RefreshPolicy", "SoftmaxConfig", "run_softmax", "softmax", "softmax_ciphers",
           "softmax_rotation_steps"]


def softmax_rotation_steps(unit: tuple[int, int], c_pad: int) -> list[int]:
    """The rotations the softmax uses (``linalg.steps.softmax_steps``). Pass them to
    ``SecretContext.create(rotations=...)``."""
    return softmax_steps(unit, c_pad)


def check_domain(logits: EncTensor, config: SoftmaxConfig, input_scale: float = 1.0) -> None:
    """On the plaintext backend in checked mode, raise DomainError for logits outside the domain.

    It reads the slot values the plaintext backend holds in the clear (no decryption). Under CKKS
    nothing can check: out-of-domain logits give wrong probabilities silently (docs/softmax.md).
    """
    backend = logits.ctx.backend
    if not backend.checked:
        return
    values = np.stack([np.real(backend.checked_values(row[0].handle)) for row in logits.blocks]) / input_scale
    valid = logits.layout.valid_mask()[:, 0, :] > 0
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
    ev, layout = logits.ctx.evaluator, logits.layout
    ciphers = [row[0] for row in logits.blocks]
    packed = packing.copies(layout) > 1
    if packed:  # g block rows per ciphertext: the softmax runs on n_a/g of them
        ciphers = packing.pack(ev, ciphers, layout, "softmax (pack block rows)")
        layout, masks = packing.packed_layout(logits.layout), packing.packed_masks(logits.layout)
    else:
        masks = slot_masks(layout)
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
