"""The interface every CKKS backend declares: what the Evaluator and the tensors may ask of it.

SealBackend (public.py builds it), PlainBackend (exact numpy slots) and NullBackend (dry runs)
subclass it. The raw ops (``encrypt``, ``add``, ``multiply``, ``rotate``, ...) are called by the
Evaluator only; the optional capabilities below are declared here with their defaults, so callers
read an attribute instead of probing with ``getattr``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .params import CKKSParams


class Backend:
    """What every backend offers; the optional capabilities default to off (a backend that checks nothing)."""

    name: str = ""
    params: CKKSParams
    slots: int
    primes: list[int]
    rotation_steps: frozenset[int]

    checked: bool = False
    """Raises DomainError where CKKS would wrap silently (the plaintext backend's checked mode)."""

    tracks_levels: bool = False
    """A handle carries its own level, scale and size: the backend then has ``level_of``,
    ``scale_of`` and ``size_of`` (SEAL; plain slot vectors carry none)."""

    def check_range(self, handle: Any, level: int, scale: float, op: str) -> None:
        """Called by the Evaluator on every result; a checked backend raises DomainError here."""

    def checked_values(self, handle: Any) -> np.ndarray | None:
        """A handle's slot values if this backend checks domains (it holds them in the clear), else None."""
        return None
