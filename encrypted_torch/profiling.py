"""Wall-time accounting by section (matmul, softmax, optimizer, refresh), for step breakdowns.

Sections nest; each second is charged to the innermost open section only (a refresh inside the
softmax counts as refresh), so the parts add up to the step.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections import defaultdict
from collections.abc import Iterator

_active: contextvars.ContextVar[tuple[dict[str, float], ...]] = contextvars.ContextVar(
    "encrypted_torch_timers", default=()
)
# The open sections, innermost last, each as [name, time it was last resumed].
_open: contextvars.ContextVar[tuple[list, ...]] = contextvars.ContextVar("encrypted_torch_sections", default=())


def _charge(entry: list, now: float) -> None:
    for table in _active.get():
        table[entry[0]] += now - entry[1]


@contextlib.contextmanager
def section(name: str) -> Iterator[None]:
    """Charge the block's wall time, less that of sections nested in it, to ``name``."""
    if not _active.get():
        yield
        return
    outer = _open.get()
    now = time.perf_counter()
    if outer:
        _charge(outer[-1], now)
    entry = [name, now]
    token = _open.set(outer + (entry,))
    try:
        yield
    finally:
        now = time.perf_counter()
        _charge(entry, now)
        _open.reset(token)
        if outer:
            outer[-1][1] = now


@contextlib.contextmanager
def timing() -> Iterator[dict[str, float]]:
    """Collect seconds per section inside the block."""
    table: dict[str, float] = defaultdict(float)
    token = _active.set(_active.get() + (table,))
    try:
        yield table
    finally:
        _active.reset(token)
