"""CKKS error bounds that tests and users compare against, derived from the ring size and scale.

Fresh-encryption and rescale errors are a few multiples of N/Δ; a key switch (rotation,
conjugation, relinearization) adds a few hundred N/Δ; errors scale with the magnitude of the
values and grow with each multiplication depth. The constants are conservative: the measured
worst cases recorded in tests/test_noise.py sit well inside them.
"""

from __future__ import annotations

from .params import CKKSParams

FRESH_UNITS = 8.0
# One key switch measured up to ~225 N/Δ (tests/test_noise.py): its error depends on the Galois
# key and has a heavy tail across keys, so 256 was too close; chains of hops grow sublinearly.
KEYSWITCH_UNITS = 512.0


def ckks_tolerance(params: CKKSParams, *, magnitude: float = 1.0, keyswitches: int = 0,
                   depth: int = 0) -> float:
    """Absolute error bound for a result of ``magnitude`` after ``keyswitches`` key switches
    and ``depth`` multiplications."""
    unit = params.poly_modulus_degree / params.scale
    return max(magnitude, 1.0) * unit * (FRESH_UNITS + KEYSWITCH_UNITS * keyswitches) * (1 + depth)
