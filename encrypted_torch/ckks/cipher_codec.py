"""One codec for ciphertexts: each one's recorded [level, scale, size] plus its bytes.

EncTensors (``to_bytes``), the protocol's cipher lists and the worker processes' pipes all carry
ciphertexts this way. Loading checks every record before SEAL sees the bytes, then checks what SEAL
reports against the record: bytes may come from a stranger, so a mismatch is the caller's typed error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import ContextMismatchError, SerializationError
from .evaluator import Cipher
from .serialize import cipher_meta


def dump(ctx: Any, ciphers: Sequence[Cipher]) -> tuple[list[list[Any]], list[bytes]]:
    """Records ``[level, scale, size]`` and the bytes of ``ciphers``, which must be under ``ctx``'s key."""
    records, payloads = [], []
    for c in ciphers:
        if c.context_id != ctx.fingerprint:
            raise ContextMismatchError("a ciphertext to serialize was encrypted under another key")
        records.append([c.level, c.scale, c.size])
        payloads.append(c.wire if c.wire is not None else ctx.backend.handle_to_bytes(c.handle))
    return records, payloads


def load(ctx: Any, records: Sequence[Any], payloads: Sequence[bytes], *, what: str = "ciphertext",
         error: type[Exception] = SerializationError) -> list[Cipher]:
    """Inverse of ``dump``; ``error`` (an EncTorchError subclass) is raised on anything inconsistent."""
    if len(records) != len(payloads):
        raise error(f"{len(records)} {what} records for {len(payloads)} payloads")
    backend, out = ctx.backend, []
    for i, (item, raw) in enumerate(zip(records, payloads, strict=True)):
        level, scale, size = cipher_meta(item, f"{what} {i}", ctx.top_level, error)
        handle = backend.handle_from_bytes(raw)
        if backend.tracks_levels:  # SEAL knows a ciphertext's level; plain slots do not
            found = (backend.level_of(handle), backend.scale_of(handle), backend.size_of(handle))
            if found != (level, scale, size):
                raise error(f"{what} {i}: level/scale/size {found}, recorded as {level, scale, size}")
        out.append(Cipher(handle, level, scale, ctx.fingerprint, size))
    return out
