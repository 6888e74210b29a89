"""The server's context: public key, relinearization and Galois keys; no path to a secret key."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from ..errors import KeyRoleError, SerializationError
from . import serialize
from .evaluator import Cipher, Evaluator
from .params import CKKSParams, get_params

KIND = "public_context"


class PublicContext:
    """Evaluation context holding public material only (what the server gets).

    Build it with ``SecretContext.public()`` or ``PublicContext.from_bytes(...)``.
    """

    holds_secret_key = False

    def __init__(self, params: CKKSParams, backend: Any, fingerprint: str, raw_parts: dict[str, bytes]):
        self.params = params
        self.backend = backend
        self.fingerprint = fingerprint
        self.evaluator = Evaluator(backend, fingerprint)
        self._raw_parts = raw_parts

    @property
    def slots(self) -> int:
        return self.params.slots

    @property
    def top_level(self) -> int:
        return self.params.levels

    @property
    def rotation_steps(self) -> frozenset[int]:
        return self.backend.rotation_steps

    @property
    def backend_name(self) -> str:
        return self.backend.name

    def encrypt_vector(self, values: Any) -> Cipher:
        """Encrypt one slot vector with the public key at the top level."""
        return self.evaluator.encrypt(values)

    def decrypt(self, *_: Any, **__: Any) -> None:
        raise KeyRoleError("a PublicContext holds no secret key and cannot decrypt; "
                           "only the key owner's SecretContext can")

    def __repr__(self) -> str:
        return (f"PublicContext(preset={self.params.name!r}, backend={self.backend_name!r}, "
                f"slots={self.slots}, levels={self.top_level}, "
                f"rotation_keys={len(self.rotation_steps)}, key={self.fingerprint[:8]})")

    # --- bytes ---------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        meta = {"backend": self.backend_name, "params": _params_meta(self.params),
                "steps": sorted(self.rotation_steps), "fingerprint": self.fingerprint}
        return serialize.pack(KIND, {"meta": serialize.dumps_json(meta), **self._raw_parts})

    @classmethod
    def from_bytes(cls, data: bytes) -> PublicContext:
        """Load a public context; bytes that carry a secret key are refused (KeyRoleError)."""
        try:
            sections = serialize.unpack(data, KIND)
        except SerializationError:
            if _looks_secret(data):
                raise KeyRoleError("these bytes are a SecretContext (they hold the secret key); "
                                   "the server loads only SecretContext.public().to_bytes()") from None
            raise
        if "secret_key" in sections:
            raise KeyRoleError("bytes contain a secret key; refusing to load them as a PublicContext")
        (meta_raw,) = serialize.require(sections, "meta")
        meta = serialize.loads_json(meta_raw)
        try:
            params = _params_from_meta(meta["params"])
            steps, backend_name, fingerprint = list(meta["steps"]), meta["backend"], meta["fingerprint"]
        except (KeyError, TypeError, ValueError) as err:
            raise SerializationError(f"malformed context metadata: {err}") from err
        parts = {k: v for k, v in sections.items() if k != "meta"}
        return build_public(params, backend_name, parts, steps, fingerprint)


def build_public(params: CKKSParams, backend_name: str, parts: dict[str, bytes],
                 steps: Iterable[int], fingerprint: str | None = None) -> PublicContext:
    """Construct a PublicContext from its public parts (used by both roles' loaders)."""
    steps = [int(s) for s in steps]
    if backend_name == "seal":
        from .seal_backend import SealBackend

        serialize.require(parts, "public_key", "relin_keys", "galois_keys")
        expected = hashlib.sha256(parts["public_key"]).hexdigest()
        if fingerprint is not None and fingerprint != expected:
            raise SerializationError("public key does not match the context's fingerprint")
        backend: Any = SealBackend(params, parts, steps)
        fingerprint = expected
    elif backend_name == "plain":
        from .plain_backend import PlainBackend

        (token,) = serialize.require(parts, "token")
        fingerprint = hashlib.sha256(token).hexdigest()
        backend = PlainBackend(params, steps)
    else:
        raise SerializationError(f"unknown backend {backend_name!r}")
    return PublicContext(params, backend, fingerprint, parts)


def _params_meta(p: CKKSParams) -> dict[str, Any]:
    return {"name": p.name, "n": p.poly_modulus_degree, "bits": list(p.coeff_bits), "scale_bits": p.scale_bits}


def _params_from_meta(m: dict[str, Any]) -> CKKSParams:
    params = CKKSParams(str(m["name"]), int(m["n"]), tuple(int(b) for b in m["bits"]), int(m["scale_bits"]))
    known = get_params(params.name) if params.name in ("test", "fast", "deep") else None
    if known is not None and known != params:
        raise SerializationError(f"parameters named {params.name!r} differ from that preset")
    if params.poly_modulus_degree not in (4096, 8192, 16384, 32768) or not params.coeff_bits:
        raise SerializationError(f"unsupported ring degree {params.poly_modulus_degree}")
    return params


def _looks_secret(data: Any) -> bool:
    try:
        serialize.unpack(data, "secret_context")
        return True
    except SerializationError:
        return False
