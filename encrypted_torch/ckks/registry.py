"""The live public contexts, by fingerprint: how an unpickled EncTensor finds its keys.

This is the library's one piece of process-wide state for persistence. A pickled EncTensor
carries its ciphertexts and its context's fingerprint, never the context (the evaluation keys are
hundreds of MB, and the same for every tensor). Unpickling looks the fingerprint up here:

* every ``PublicContext`` registers itself when it is built (``SecretContext.public()``,
  ``PublicContext.from_bytes``, unpickling a context), weakly: the registry never keeps a context
  alive, so a context the program dropped cannot be found;
* ``with pin(public_ctx):`` makes a context the first one looked up for the block: the explicit
  form (``ckks.public.load_context``), for a context that exists only for the load.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import weakref
from collections.abc import Iterator
from typing import Any

from ..errors import ContextNotLoadedError

# Several live contexts may share a fingerprint (one unpickled, one from SecretContext.public()):
# each is kept as a weak reference, so that one dying does not hide the others.
_live: dict[str, list[weakref.ref[Any]]] = {}
_lock = threading.Lock()
_pinned: contextvars.ContextVar[tuple[Any, ...]] = contextvars.ContextVar("encrypted_torch_pinned", default=())


def register(ctx: Any) -> None:
    """Make a PublicContext findable by its fingerprint while it is alive (called by its __init__)."""
    with _lock:
        for fingerprint in [f for f, refs in _live.items() if all(r() is None for r in refs)]:
            del _live[fingerprint]
        _live.setdefault(ctx.fingerprint, []).append(weakref.ref(ctx))


def lookup(fingerprint: str) -> Any:
    """The live PublicContext with this fingerprint; ContextNotLoadedError if there is none."""
    for ctx in reversed(_pinned.get()):
        if ctx.fingerprint == fingerprint:
            return ctx
    with _lock:
        alive = [c for c in (r() for r in _live.get(fingerprint, ())) if c is not None]
    ctx = alive[-1] if alive else None
    if ctx is None:
        raise ContextNotLoadedError(
            f"no live context with key fingerprint {fingerprint[:8]}: load the public context "
            "(PublicContext.from_bytes(...), or keep your SecretContext) before torch.load / "
            "pickle.load, or load inside `with encrypted_torch.load_context(ctx):`")
    return ctx


@contextlib.contextmanager
def pin(public: Any) -> Iterator[Any]:
    """Look ``public`` (a PublicContext) up first inside the block."""
    token = _pinned.set((*_pinned.get(), public))
    try:
        yield public
    finally:
        _pinned.reset(token)
