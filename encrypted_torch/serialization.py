"""Saving and loading with torch's own functions: ``torch.save``/``torch.load``, ``pickle``, ``copy``.

An ``EncTensor`` (and so a ``Module``'s and an optimizer's ``state_dict()``) pickles to its
checksummed ciphertext bytes plus its context's fingerprint; loading finds the live
``PublicContext`` with that fingerprint (``ckks/registry.py``), or raises ContextNotLoadedError.
The functions that rebuild our objects are allowlisted for ``torch.load(weights_only=True)``
(torch's default since 2.6) when encrypted_torch is imported: they only parse checksummed bytes.

``torch.save(obj, path)`` opens (truncates) ``path`` before pickling, so an object that cannot be
pickled leaves a broken file behind. ``save`` pickles in memory first and then replaces the file
atomically: use it for anything you cannot afford to lose.

>>> et.save(model.state_dict(), "model.pt")                     # doctest: +SKIP
>>> model.load_state_dict(et.load("model.pt", public_ctx))     # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import io
import os
from typing import IO, Any

import torch

from .ckks.public import _rebuild_public, load_context
from .tensor.enctensor import _rebuild_enc_tensor

SAFE_GLOBALS = [_rebuild_enc_tensor, _rebuild_public]
torch.serialization.add_safe_globals(SAFE_GLOBALS)


def save(obj: Any, f: str | os.PathLike[str] | IO[bytes], **torch_save_kwargs: Any) -> None:
    """``torch.save`` that writes nothing unless the whole object pickled: to a path, atomically
    (the old file stays intact on any error); to a file object, in one write."""
    buffer = io.BytesIO()
    torch.save(obj, buffer, **torch_save_kwargs)
    if isinstance(f, (str, os.PathLike)):
        from .storage.atomic import atomic_write_bytes  # lazily: keeps `import encrypted_torch` light

        atomic_write_bytes(f, buffer.getbuffer())
    else:
        f.write(buffer.getbuffer())


def load(f: str | os.PathLike[str] | IO[bytes], ctx: Any = None, **torch_load_kwargs: Any) -> Any:
    """``torch.load`` (``weights_only=True`` by default, as torch's) with EncTensors resolved
    against ``ctx`` (a PublicContext or SecretContext) first, then against any live context."""
    scope = load_context(ctx) if ctx is not None else contextlib.nullcontext()
    with scope:
        return torch.load(f, **torch_load_kwargs)


__all__ = ["SAFE_GLOBALS", "load", "load_context", "save"]
