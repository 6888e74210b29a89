"""Wall-time accounting by section (matmul, softmax, optimizer, refresh), for step breakdowns."""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections import defaultdict
from collections.abc import Iterator

_active: contextvars.ContextVar[tuple[dict[str, float], ...]] = contextvars.ContextVar(
    "encrypted_torch_timers", default=()
)
_stack: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("encrypted_torch_sections", default=())


@contextlib.contextmanager
def section(name: str) -> Iterator[None]:
    """Charge the block's wall time to ``name`` in every active ``timing()`` (outermost section wins)."""
    outer = _stack.get()
    if outer or not _active.get():
        yield
        return
    token = _stack.set((name,))
    start = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - start
        _stack.reset(token)
        for table in _active.get():
            table[name] += elapsed


@contextlib.contextmanager
def timing() -> Iterator[dict[str, float]]:
    """Collect seconds per section inside the block."""
    table: dict[str, float] = defaultdict(float)
    token = _active.set(_active.get() + (table,))
    try:
        yield table
    finally:
        _active.reset(token)
