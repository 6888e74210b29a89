"""Refresh instead of bootstrapping: the key owner brings ciphertexts back to the top level.

SEAL cannot bootstrap, so an op that would run out of levels asks the active ``Refresher``
(set with ``refresh_with``); with none set it raises DepthError. HETAL.md §1: a refresh is the
identity (decrypt, re-encrypt), it is interactive, and its count is reported.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol, runtime_checkable

from .ckks.evaluator import Cipher
from .errors import DepthError


@runtime_checkable
class Refresher(Protocol):
    """Anything that turns ciphertexts into fresh encryptions of the same values at the top level.

    ``stage`` names the op asking (``ensure_levels``' ``op``): the key owner checks the decrypted
    values against that stage's domain and the job's plan. A refresher without the keyword works too.
    """

    def refresh(self, ciphers: Sequence[Cipher]) -> list[Cipher]: ...


_current: contextvars.ContextVar[Refresher | None] = contextvars.ContextVar(
    "encrypted_torch_refresher", default=None
)


@contextlib.contextmanager
def refresh_with(refresher: Refresher | None) -> Iterator[Refresher | None]:
    """Let ops inside the block refresh ciphertexts that run out of levels through ``refresher``.

    >>> with refresh_with(secret_ctx):          # doctest: +SKIP
    ...     loss = model(x)
    """
    if refresher is not None and not isinstance(refresher, Refresher):
        raise TypeError(f"{type(refresher).__name__} has no refresh(ciphers) method")
    token = _current.set(refresher)
    try:
        yield refresher
    finally:
        _current.reset(token)


def current_refresher() -> Refresher | None:
    return _current.get()


@dataclass(frozen=True)
class LevelPolicy:
    """How the circuits spend levels, decided in one place from whether a Refresher is active.

    With one (``refreshes``), an operand short of levels is refreshed, the matrix products run
    their rotations low and return at level 0 (the consumer refreshes the few outputs), and DiagABT
    packs B's diagonals with the ×i "const" option (refreshing B's n_b blocks costs less than the
    1.3–1.7× of "real"). Without one, a short operand is a DepthError and products keep every level
    they can. ``level_policy()`` reads the ambient refresher; docs/matmul.md, "Output level".
    """

    refreshes: bool

    @property
    def product_out_level(self) -> int | None:
        """Where a product's result lands: 0, or None for as high as the operands allow."""
        return 0 if self.refreshes else None

    @property
    def prefer_const_packing(self) -> bool:
        return self.refreshes


def level_policy() -> LevelPolicy:
    """The level policy of the active ``refresh_with`` block (or of none)."""
    return LevelPolicy(refreshes=_current.get() is not None)


def ensure_levels(ciphers: Sequence[Cipher], levels: int, op: str, *,
                  back_at: int | None = None) -> list[Cipher]:
    """Return ``ciphers`` with at least ``levels`` levels each, refreshing only those short of it.

    ``back_at``: the levels the caller uses of what it gets (≥ ``levels``; a matrix product passes
    ``levels`` itself and mod-switches the rest away; the optimizer's gradient keeps more than its
    first use needs), so a refresh may come back at that level instead of the top: the same values,
    cheaper to make, send and use. Raises DepthError naming the op when a refresh is needed and no
    refresher is active.
    """
    short = [i for i, c in enumerate(ciphers) if c.level < levels]
    if not short:
        return list(ciphers)
    refresher = _current.get()
    if refresher is None:
        raise DepthError(op, levels, min(ciphers[i].level for i in short))
    if back_at is not None and back_at < levels:
        raise ValueError(f"back_at={back_at} is below the {levels} levels asked for")
    fresh = refresh_stage(refresher, [ciphers[i] for i in short], op, level=back_at)
    out = list(ciphers)
    for i, c in zip(short, fresh, strict=True):
        if c.level < levels:
            raise DepthError(op, levels, c.level, "even a fresh ciphertext is too shallow; "
                             "pick a deeper preset")
        out[i] = c
    return out


def refresh_stage(refresher: Refresher, ciphers: Sequence[Cipher], stage: str,
                  level: int | None = None) -> list[Cipher]:
    """``refresher.refresh(ciphers, stage=stage, level=level)``, leaving out the keywords a refresher
    does not take (``level``: the lowest level the caller accepts back; None or no keyword: the top)."""
    takes = _keywords(type(refresher))
    kwargs: dict[str, object] = {}
    if "stage" in takes:
        kwargs["stage"] = stage
    if "level" in takes and level is not None:
        kwargs["level"] = level
    return refresher.refresh(ciphers, **kwargs)  # type: ignore[call-arg]


@lru_cache(maxsize=64)
def _keywords(cls: type) -> frozenset[str]:
    try:
        return frozenset(inspect.signature(cls.refresh).parameters)
    except (TypeError, ValueError):
        return frozenset()
