"""What crosses from the driver to a Ray worker: a share function pickled by value (cloudpickle), its
ciphertexts pulled out as bytes, its keys replaced by their fingerprint.

The public context travels once per node (``ray.put``) and is loaded once per worker process, so a
pickled closure only names it; evaluators and backends likewise. Anything that holds a secret key (a
SecretContext, a key owner) is refused with KeyRoleError before a byte is written: the secret never
leaves the driver.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

from ray import cloudpickle

from ..ckks import cipher_codec
from ..ckks.backend import Backend
from ..ckks.evaluator import Cipher, Evaluator
from ..ckks.public import PublicContext
from ..ckks.serialize import cipher_meta
from ..errors import ContextMismatchError, KeyRoleError
from . import WorkerError

Packed = tuple[bytes, list[list[Any]], list[bytes]]
"""A pickled closure, the records of its ciphertexts and their bytes (``cipher_codec``)."""


def holds_secret(obj: Any) -> bool:
    """True for a SecretContext or a key owner (looked up on the type: no instance hook runs)."""
    kind = type(obj)
    return getattr(kind, "holds_secret_key", False) is True or hasattr(kind, "secret_bytes")


class _Pickler(cloudpickle.CloudPickler):
    def __init__(self, file: io.BytesIO, ctx: PublicContext) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.ctx = ctx
        self.ciphers: list[Cipher] = []
        self.index: dict[int, int] = {}

    def persistent_id(self, obj: Any) -> Any:  # noqa: C901 (one branch per kind of key material)
        if isinstance(obj, Cipher):
            i = self.index.get(id(obj))
            if i is None:
                i = self.index[id(obj)] = len(self.ciphers)
                self.ciphers.append(obj)
            return ("cipher", i)
        if holds_secret(obj):
            raise KeyRoleError(f"a share's function holds a {type(obj).__name__} (the secret key); only public "
                               "material may go to a worker. Refresh through refresh_with() in the driver")
        if isinstance(obj, PublicContext | Evaluator):
            fingerprint = obj.fingerprint if isinstance(obj, PublicContext) else obj.context_id
            if fingerprint != self.ctx.fingerprint:
                raise ContextMismatchError("a share's function uses keys other than the map's context")
            return ("ctx",) if isinstance(obj, PublicContext) else ("evaluator",)
        if isinstance(obj, Backend):
            if obj is not self.ctx.backend:
                raise ContextMismatchError("a share's function uses a backend other than the map's context")
            return ("backend",)
        return None


class LazyCipher(Cipher):
    """A ciphertext whose bytes are loaded into SEAL when an op first reads its handle: a worker pays
    only for the ciphertexts its shares touch (a fine split touches a fraction of a function's)."""

    def __init__(self, backend: Any, raw: bytes, level: int, scale: float, context_id: str, size: int) -> None:
        self._backend, self._raw, self._handle = backend, raw, None
        self.level, self.scale, self.context_id, self.size = level, scale, context_id, size

    @property  # type: ignore[override]
    def handle(self) -> Any:
        if self._handle is None:
            handle = self._backend.handle_from_bytes(self._raw)
            if self._backend.tracks_levels:
                found = (self._backend.level_of(handle), self._backend.scale_of(handle),
                         self._backend.size_of(handle))
                if found != (self.level, self.scale, self.size):
                    raise WorkerError(f"share ciphertext: level/scale/size {found}, recorded as "
                                      f"{self.level, self.scale, self.size}")
            self._handle, self._raw = handle, None
        return self._handle

    @handle.setter
    def handle(self, value: Any) -> None:
        self._handle, self._raw = value, None

    @property
    def loaded(self) -> bool:
        return self._handle is not None

    @property
    def nbytes(self) -> int:
        """Bytes this ciphertext took on the wire (0 once loaded: they are dropped)."""
        return len(self._raw) if self._raw is not None else 0


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, ctx: PublicContext, ciphers: list[Cipher]) -> None:
        super().__init__(file)
        self.ctx, self.ciphers = ctx, ciphers

    def persistent_load(self, pid: Any) -> Any:
        kind = pid[0]
        if kind == "cipher":
            return self.ciphers[pid[1]]
        if kind == "ctx":
            return self.ctx
        if kind == "evaluator":
            return self.ctx.evaluator
        if kind == "backend":
            return self.ctx.backend
        raise WorkerError(f"unknown reference {kind!r} in a share's function")


def dumps(obj: Any, ctx: PublicContext) -> Packed:
    """``obj`` (a share function and what it closes over) as bytes with its ciphertexts apart."""
    buf = io.BytesIO()
    pickler = _Pickler(buf, ctx)
    pickler.dump(obj)
    records, payloads = cipher_codec.dump(ctx, pickler.ciphers)
    return buf.getvalue(), records, payloads


def loads(packed: Packed, ctx: PublicContext) -> Any:
    """Inverse of ``dumps`` in a worker that holds ``ctx`` (bytes from our own driver, not a stranger);
    the ciphertexts are LazyCiphers, loaded when first used."""
    return loads_with_ciphers(packed, ctx)[0]


def loads_with_ciphers(packed: Packed, ctx: PublicContext) -> tuple[Any, list[LazyCipher]]:
    """``loads``, and the LazyCiphers it made (which ones a share loaded is what it cost to receive)."""
    data, records, payloads = packed
    if len(records) != len(payloads):
        raise WorkerError(f"{len(records)} share ciphertext records for {len(payloads)} payloads")
    ciphers = []
    for i, (item, raw) in enumerate(zip(records, payloads, strict=True)):
        level, scale, size = cipher_meta(item, f"share ciphertext {i}", ctx.top_level, WorkerError)
        ciphers.append(LazyCipher(ctx.backend, raw, level, scale, ctx.fingerprint, size))
    return _Unpickler(io.BytesIO(data), ctx, ciphers).load(), ciphers
