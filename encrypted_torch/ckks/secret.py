"""The key owner's context: generates keys, encrypts, decrypts and refreshes (client side only)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from ..errors import ContextMismatchError, KeyRoleError, SerializationError
from . import counters, serialize
from .evaluator import Cipher
from .galois import power_of_two_steps
from .params import CKKSParams, get_params
from .public import PublicContext, _params_meta, key_fingerprint, pack_public, parse_context_meta

KIND = "secret_context"


class SecretContext:
    """Holds the secret key. Never give it (or its bytes) to the server: give ``public()``.

    >>> sk = SecretContext.create("test", backend="plain")
    >>> pk = sk.public()           # what the server gets
    """

    holds_secret_key = True

    def __init__(self, params: CKKSParams, backend_name: str, owner: Any,
                 public_parts: dict[str, bytes], steps: Sequence[int]) -> None:
        self.params = params
        self.backend_name = backend_name
        self._owner = owner
        self._public_parts = public_parts
        self._steps = sorted({int(s) % params.slots for s in steps} - {0})
        self._public: PublicContext | None = None

    @classmethod
    def create(cls, preset: str | CKKSParams = "fast", rotations: Iterable[int] | None = None,
               backend: str = "seal") -> SecretContext:
        """Generate fresh keys. ``rotations``: the rotation steps to make Galois keys for
        (default: all ±2^i, as TenSEAL; pass a layout's steps to save memory). ``backend``:
        ``"seal"`` (real CKKS) or ``"plain"`` (exact numpy slots, for tests and op counts)."""
        params = get_params(preset)
        steps = list(power_of_two_steps(params.slots) if rotations is None else rotations)
        if backend == "seal":
            from .seal_backend import SealKeyOwner

            owner: Any = SealKeyOwner(params)
            parts = owner.make_public_parts(steps)
        elif backend == "plain":
            owner = _PlainKeyOwner(os.urandom(16))
            parts = {"token": owner.token}
        else:
            raise ValueError(f"unknown backend {backend!r}; choose 'seal' or 'plain'")
        return cls(params, backend, owner, parts, steps)

    def public(self) -> PublicContext:
        """The server's context, rebuilt from bytes that carry no secret key."""
        if self._public is None:
            self._public = PublicContext.from_bytes(self.public_bytes())
        return self._public

    def public_bytes(self) -> bytes:
        """The serialized PublicContext to send to the server."""
        if self._public is not None:
            return self._public.to_bytes()
        # Packed directly: building a PublicContext here would load every key once more.
        fingerprint = key_fingerprint(self.backend_name, self._public_parts)
        return pack_public(self.params, self.backend_name, self._steps, fingerprint, self._public_parts)

    @property
    def fingerprint(self) -> str:
        return self.public().fingerprint

    @property
    def slots(self) -> int:
        return self.params.slots

    def __repr__(self) -> str:
        return (f"SecretContext(preset={self.params.name!r}, backend={self.backend_name!r}, "
                f"slots={self.slots}, levels={self.params.levels})")

    def decrypt_vector(self, c: Cipher) -> np.ndarray:
        """The complex slot values of one ciphertext."""
        if not isinstance(c, Cipher):
            raise TypeError(f"expected a Cipher, got {type(c).__name__}")
        if c.context_id != self.fingerprint:
            raise ContextMismatchError("this ciphertext was encrypted under another key")
        return self._owner.decrypt(c.handle)

    def decrypt(self, x: Any) -> Any:
        """Decrypt an EncTensor to a float64 torch.Tensor of its shape (or a Cipher to slots)."""
        if isinstance(x, Cipher):
            return self.decrypt_vector(x)
        decrypt_with = getattr(x, "_decrypt_with", None)
        if decrypt_with is None:
            raise TypeError(f"cannot decrypt a {type(x).__name__}")
        return decrypt_with(self)

    def refresh(self, ciphers: Sequence[Cipher],
                inspect: Callable[[list[np.ndarray]], None] | None = None,
                level: int | None = None) -> list[Cipher]:
        """Decrypt and re-encrypt at ``level`` (default: the top); nothing else (a refresh is the identity).

        ``inspect`` sees the decrypted slot vectors before anything is re-encrypted (the key owner's
        domain guard); whatever it raises stops the refresh. A consumer that needs only a few levels
        asks for them: a lower fresh encryption is cheaper to make, send and use, and reveals no more."""
        decrypted = self._decrypt_for_refresh(ciphers, inspect)
        out = self.encrypt_vectors(decrypted, level)
        for c in ciphers:
            counters.record("refreshes", level=c.level)
        return out

    def refresh_payloads(self, ciphers: Sequence[Cipher],
                         inspect: Callable[[list[np.ndarray]], None] | None = None, level: int | None = None,
                         seeded: bool = True) -> tuple[list[list[Any]], list[bytes]]:
        """``refresh`` straight to bytes for the wire: ``cipher_codec`` records and payloads, in SEAL's
        seeded form (about half the bytes) when ``seeded`` and the backend has it."""
        decrypted = self._decrypt_for_refresh(ciphers, inspect)
        out = self.encrypt_payloads(decrypted, level, seeded)
        for c in ciphers:
            counters.record("refreshes", level=c.level)
        return out

    def _decrypt_for_refresh(self, ciphers: Sequence[Cipher],
                             inspect: Callable[[list[np.ndarray]], None] | None) -> list[np.ndarray]:
        decrypted = [self.decrypt_vector(c) for c in ciphers]
        if inspect is not None:
            inspect(decrypted)
        return decrypted

    def _level(self, level: int | None) -> int:
        top = self.params.levels
        if level is None:
            return top
        if not 0 <= level <= top:
            raise ValueError(f"level {level} outside this context's levels 0..{top}")
        return int(level)

    def encrypt_vectors(self, vectors: Sequence[np.ndarray], level: int | None = None,
                        seeded: bool = False) -> list[Cipher]:
        """Fresh encryptions of slot vectors at ``level`` (default: the top), with the secret key where
        the backend has secret-key encryption (half the work of the public key's). ``seeded``: each
        keeps its seeded bytes, which serialization sends instead (half the bytes: for what will be
        saved or uploaded, like a data set)."""
        ev, level = self.public().evaluator, self._level(level)
        out = []
        for values in vectors:
            values = values if np.any(np.imag(values)) else np.real(values)
            if seeded and self._owner.symmetric_encryption:
                wire = self._owner.encrypt_symmetric_seeded(values, self.params.scale, level)
                counters.record("encryptions", level=level)
                out.append(SeededCipher(ev.backend, wire, level, self.params.scale, ev.context_id))
            elif self._owner.symmetric_encryption:
                out.append(ev.adopt_fresh(self._owner.encrypt_symmetric(values, self.params.scale, level),
                                          level, self.params.scale))
            else:
                out.append(ev.encrypt(values, level=level))
        return out

    def encrypt_payloads(self, vectors: Sequence[np.ndarray], level: int | None = None,
                         seeded: bool = True) -> tuple[list[list[Any]], list[bytes]]:
        """``encrypt_vectors`` as ``cipher_codec`` records and bytes, seeded where possible."""
        level = self._level(level)
        if not (seeded and self._owner.symmetric_encryption):
            ciphers = self.encrypt_vectors(vectors, level)
            backend = self.public().backend
            return [[c.level, c.scale, c.size] for c in ciphers], [backend.handle_to_bytes(c.handle) for c in ciphers]
        records, payloads = [], []
        for values in vectors:
            values = values if np.any(np.imag(values)) else np.real(values)
            payloads.append(self._owner.encrypt_symmetric_seeded(values, self.params.scale, level))
            records.append([level, self.params.scale, 2])
            counters.record("encryptions", level=level)
        return records, payloads

    def __reduce__(self) -> tuple[Any, ...]:
        raise KeyRoleError("pickling a SecretContext would write the secret key wherever the pickle "
                           "goes; save ctx.public() for the server, and, if you mean to keep the secret "
                           "key, write secret.to_bytes() yourself (SecretContext.from_bytes reads it)")

    def __copy__(self) -> SecretContext:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> SecretContext:
        return self

    def to_bytes(self) -> bytes:
        meta = {"backend": self.backend_name, "params": _params_meta(self.params), "steps": self._steps}
        return serialize.pack(KIND, {"meta": serialize.dumps_json(meta),
                                     "secret_key": self._owner.secret_bytes(), **self._public_parts})

    @classmethod
    def from_bytes(cls, data: bytes) -> SecretContext:
        sections = serialize.unpack(data, KIND)
        meta_raw, sk = serialize.require(sections, "meta", "secret_key")
        meta = serialize.loads_json(meta_raw, "secret context metadata")
        params, backend, steps = parse_context_meta(meta, set())
        parts = {k: v for k, v in sections.items() if k not in ("meta", "secret_key")}
        if backend == "seal":
            from .seal_backend import SealKeyOwner

            try:
                owner: Any = SealKeyOwner(params, secret_key_bytes=sk)
            except SerializationError:
                raise
            except (ValueError, RuntimeError, TypeError) as err:  # SEAL rejects the parameters
                raise SerializationError(f"cannot build a seal context from these parameters: {err}") from err
        else:
            owner = _PlainKeyOwner(sk)
        ctx = cls(params, backend, owner, parts, steps)
        ctx._check_key_pair()  # also validates the public parts now, not at first use
        return ctx

    def _check_key_pair(self) -> None:
        """Refuse a secret key that does not decrypt what the public key encrypts (spliced bytes)."""
        backend = self.public().backend
        if self.backend_name == "plain":
            matches = self._owner.token == self._public_parts.get("token")
        else:
            probe = np.linspace(-1.0, 1.0, self.slots)
            handle = backend.encrypt(probe, self.params.levels, self.params.scale)
            matches = bool(np.max(np.abs(self._owner.decrypt(handle).real - probe)) < 1e-3)
        if not matches:
            raise ContextMismatchError("the secret key does not belong to the public key in these bytes")


class SeededCipher(Cipher):
    """A key owner's fresh encryption held as its seeded bytes (half a ciphertext): what is saved and
    sent as is; SEAL expands it only when an op first reads the handle (a data set that is written
    and uploaded never is)."""

    def __init__(self, backend: Any, wire: bytes, level: int, scale: float, context_id: str) -> None:
        self._backend, self._handle = backend, None
        self.wire, self.level, self.scale, self.context_id, self.size = wire, level, scale, context_id, 2

    @property  # type: ignore[override]
    def handle(self) -> Any:
        if self._handle is None:
            self._handle = self._backend.handle_from_bytes(self.wire)
        return self._handle

    @handle.setter
    def handle(self, value: Any) -> None:
        self._handle = value


class _PlainKeyOwner:
    """The plaintext backend's 'key': a random token that ties ciphertexts to their context."""

    symmetric_encryption = False  # refreshes encrypt with the public key (the same exact slots)

    def __init__(self, token: bytes) -> None:
        self.token = token

    def decrypt(self, handle: np.ndarray) -> np.ndarray:
        return np.array(handle, dtype=np.complex128)

    def secret_bytes(self) -> bytes:
        return self.token
