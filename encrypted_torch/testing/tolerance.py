"""Default tolerances for comparing a decrypted result with its plaintext reference.

On SEAL the default absolute tolerance is ``ckks_tolerance`` (ckks/noise.py) read off the result:

    atol = max(magnitude, 1) · (N/Δ) · (8 + 512 · keyswitches) · (1 + depth)

- ``N/Δ``: ring degree over the scale (8192 / 2^40 ≈ 7.5e-9 on the ``test`` preset), the size of one
  encoding or rescale rounding;
- ``depth``: levels the result has consumed, ``top_level − level`` (a multiplication costs one);
- ``keyswitches``: ``depth`` relinearizations plus ``2·log2(slots) + 6``, the longest chain of
  rotations the library puts on one slot (a sum over a whole ciphertext takes log2(slots) hops, a
  DiagABT/DiagATB product 2·log2(s1) + log2(s0) + 6, docs/matmul.md);
- ``magnitude``: the largest |value| of the reference (CKKS errors grow with the values).

So a fresh 0-level result of O(1) values gets ≈ 1.2e-4 on ``test``; pass ``keyswitches=`` (or
``depth=``, ``magnitude=``) for a tighter or a wider bound: ``keyswitches=0`` for elementwise ops
without rotations, ``depth=`` after a refresh (which resets the level, not the error), ``magnitude=``
when operands are larger than the result. ``rtol`` defaults to 0: the magnitude is in ``atol``.

On the plaintext backend there is no noise: elementwise ops match torch float64 exactly, and sums
and products differ only by float64 rounding (they add in another order), so the default is
``atol = 1e-10 · max(magnitude, 1)``. Approximation error (softmax, exp, inverse) is not noise:
add its proven bound to ``atol`` yourself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..ckks.noise import ckks_tolerance
from ..ckks.params import CKKSParams

FLOAT64_ROUNDING = 1e-10
FRESH_LEVEL_EXTRA = 6  # DiagABT's extra hops beyond 2·log2(slots) (docs/matmul.md)


@dataclass(frozen=True)
class Tolerance:
    """An ``atol``/``rtol`` pair and where it comes from (shown when a comparison fails)."""

    atol: float
    rtol: float
    source: str


def default_keyswitches(params: CKKSParams, depth: int) -> int:
    """``depth`` relinearizations plus the longest rotation chain on one slot, 2·log2(slots) + 6."""
    return depth + 2 * int(math.log2(params.slots)) + FRESH_LEVEL_EXTRA


def tolerance(params: CKKSParams | None, backend: str, *, level: int | None = None, magnitude: float = 1.0,
              depth: int | None = None, keyswitches: int | None = None) -> Tolerance:
    """The default tolerance for a result at ``level`` (levels left) on ``backend`` ("seal", "plain",
    or "torch" for two plaintext tensors).

    >>> tolerance(PRESETS["test"], "seal", level=2).atol     # doctest: +SKIP
    0.000228...
    """
    if backend in ("plain", "torch"):
        where = "plaintext backend" if backend == "plain" else "no EncTensor"
        atol = FLOAT64_ROUNDING * max(magnitude, 1.0)
        return Tolerance(atol, 0.0, f"{where}: float64 rounding, 1e-10 · max(magnitude={magnitude:.3g}, 1)")
    if params is None:
        raise ValueError(f"the {backend!r} backend's tolerance needs its CKKSParams")
    if depth is None:
        depth = 0 if level is None else params.levels - level
    if keyswitches is None:
        keyswitches = default_keyswitches(params, depth)
    atol = ckks_tolerance(params, magnitude=magnitude, keyswitches=keyswitches, depth=depth)
    levels = f" (levels {params.levels} → {level})" if level is not None else ""
    return Tolerance(atol, 0.0, f"ckks_tolerance(preset {params.name!r}: N/Δ = {params.poly_modulus_degree}/2^"
                                f"{params.scale_bits}, magnitude={magnitude:.3g}, depth={depth}{levels}, "
                                f"keyswitches={keyswitches})")
