"""NullBackend: the raw-op interface of the CKKS backends, doing nothing, for dry runs.

A circuit's operations depend on the layout and the levels only, never on the values, so running
the very same code on ciphers that carry levels and scales but no data gives its depth, its refresh
points and its operation counts in milliseconds (functional/plan.py, training/unit_choice.py,
training/refresh_plan.py).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from . import counters
from .backend import Backend
from .evaluator import Cipher, Evaluator
from .galois import power_of_two_steps
from .params import CKKSParams
from .public import PublicContext
from .seal_backend import data_primes


class NullBackend(Backend):
    """The raw-op interface of the CKKS backends, doing nothing: levels and scales are the
    evaluator's bookkeeping, which is all a plan needs."""

    name = "null"

    def __init__(self, params: CKKSParams, primes: list[int], steps: Any = None) -> None:
        self.params = params
        self.slots = params.slots
        self.primes = list(primes)
        steps = power_of_two_steps(self.slots) if steps is None else steps
        self.rotation_steps = frozenset(s % self.slots for s in steps) - {0}

    def _none(self, *_: Any) -> None:
        return None

    encrypt = add = sub = negate = add_plain = multiply = square = relinearize = rescale = _none
    multiply_plain = rotate = conjugate = mod_switch = set_scale = _none


def synthetic_params(levels: int, poly_modulus_degree: int = 16384) -> CKKSParams:
    """Parameters with ``levels`` levels (no security claim: for plans only)."""
    return CKKSParams(f"plan-{levels}", poly_modulus_degree, (60,) + (40,) * levels + (60,), 40)


@lru_cache(maxsize=8)
def seal_primes(params: CKKSParams) -> list[int]:
    """The data primes q_0..q_L SEAL picks for ``params`` (a dry run rescales by the same ones)."""
    return data_primes(params)


def null_context(params: CKKSParams, steps: Any = None, name: str = "dry run",
                 primes: list[int] | None = None) -> PublicContext:
    """A PublicContext of ``params`` on a NullBackend with rotation ``steps`` and ``primes`` (default:
    SEAL's for ``params``; pass a real context's own to mirror it exactly)."""
    primes = seal_primes(params) if primes is None else list(primes)
    return PublicContext(params, NullBackend(params, primes, steps), name, {})


class DryRefresher:
    """A Refresher for dry runs: counts each refresh and returns fresh (empty) top-level ciphers."""

    def __init__(self, ev: Evaluator) -> None:
        self.ev = ev

    def refresh(self, ciphers: Any, level: int | None = None) -> list[Cipher]:
        """Fresh (empty) ciphers at ``level`` (default: the top), as ``SecretContext.refresh`` makes them."""
        for c in ciphers:
            counters.record("refreshes", level=c.level)
        return [self.ev.encrypt(0.0, level=level) for _ in ciphers]
