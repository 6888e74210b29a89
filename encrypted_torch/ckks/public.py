"""The server's context: public key, relinearization and Galois keys; no path to a secret key."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterable, Iterator
from typing import Any

from ..errors import KeyRoleError, SerializationError
from . import registry, serialize
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
        registry.register(self)  # unpickled EncTensors find their keys here (ckks/registry.py)

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

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        data = self.to_bytes()  # protocol 2 (torch.save's): a uint8 tensor, as EncTensor's payload
        if isinstance(protocol, int) and protocol < 3:
            import torch  # here only: ckks/ does not otherwise depend on torch

            return _rebuild_public, (torch.frombuffer(bytearray(data), dtype=torch.uint8),)
        return _rebuild_public, (data,)

    def __copy__(self) -> PublicContext:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> PublicContext:
        return self

    def to_bytes(self) -> bytes:
        return pack_public(self.params, self.backend_name, self.rotation_steps, self.fingerprint,
                           self._raw_parts)

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
        meta = serialize.loads_json(meta_raw, "public context metadata")
        params, backend_name, steps = parse_context_meta(meta, {"fingerprint"})
        fingerprint = meta["fingerprint"]
        if not isinstance(fingerprint, str):
            raise SerializationError("malformed context metadata: fingerprint must be a string")
        parts = {k: v for k, v in sections.items() if k != "meta"}
        return build_public(params, backend_name, parts, steps, fingerprint)


def _rebuild_public(payload: Any) -> PublicContext:
    """Unpickle a PublicContext (allowlisted for torch.load(weights_only=True))."""
    to_bytes = getattr(payload, "numpy", None)  # a torch uint8 tensor
    return PublicContext.from_bytes(to_bytes().tobytes() if to_bytes is not None else payload)


def build_public(params: CKKSParams, backend_name: str, parts: dict[str, bytes],
                 steps: Iterable[int], fingerprint: str | None = None) -> PublicContext:
    """Construct a PublicContext from its public parts (used by both roles' loaders)."""
    try:
        steps = [int(s) for s in steps]
    except (TypeError, ValueError, OverflowError) as err:
        raise SerializationError(f"malformed rotation steps: {err}") from err
    if backend_name not in ("seal", "plain"):
        raise SerializationError(f"unknown backend {backend_name!r}")
    expected = key_fingerprint(backend_name, parts)
    if fingerprint is not None and fingerprint != expected:
        raise SerializationError("the key material does not match the context's fingerprint")
    try:
        if backend_name == "seal":
            from .seal_backend import SealBackend

            serialize.require(parts, "public_key", "relin_keys", "galois_keys")
            backend: Any = SealBackend(params, parts, steps)
        else:
            from .plain_backend import PlainBackend

            backend = PlainBackend(params, steps)
    except SerializationError:
        raise
    except (ValueError, RuntimeError, TypeError) as err:  # SEAL rejects the parameters
        raise SerializationError(f"cannot build a {backend_name} context from these parameters: {err}") from err
    return PublicContext(params, backend, expected, parts)


def pack_public(params: CKKSParams, backend_name: str, steps: Iterable[int], fingerprint: str,
                parts: dict[str, bytes]) -> bytes:
    """The bytes of a PublicContext (also made by the key owner without loading the keys)."""
    meta = {"backend": backend_name, "params": _params_meta(params), "steps": sorted(steps),
            "fingerprint": fingerprint}
    return serialize.pack(KIND, {"meta": serialize.dumps_json(meta), **parts})


def key_fingerprint(backend_name: str, parts: dict[str, bytes]) -> str:
    """A context's identity: the hash of its public key (the plaintext backend's token)."""
    (key,) = serialize.require(parts, "public_key" if backend_name == "seal" else "token")
    return hashlib.sha256(key).hexdigest()


def _params_meta(p: CKKSParams) -> dict[str, Any]:
    return {"name": p.name, "n": p.poly_modulus_degree, "bits": list(p.coeff_bits), "scale_bits": p.scale_bits}


def parse_context_meta(meta: Any, extra: set[str]) -> tuple[CKKSParams, str, list[int]]:
    """Parameters, backend and rotation steps from a context's metadata (bytes from a stranger):
    every field's type and range is checked before SEAL sees it; SerializationError if not."""
    if not isinstance(meta, dict) or set(meta) != {"backend", "params", "steps"} | extra:
        raise SerializationError(f"malformed context metadata: expected the fields "
                                 f"{sorted({'backend', 'params', 'steps'} | extra)}")
    if meta["backend"] not in ("seal", "plain"):
        raise SerializationError(f"unknown backend {str(meta['backend'])[:40]!r}")
    params = _params_from_meta(meta["params"])
    steps = meta["steps"]
    if not isinstance(steps, list) or len(steps) > params.slots or not all(
            type(s) is int and -params.slots < s < params.slots for s in steps):
        raise SerializationError(f"malformed rotation steps: a list of at most {params.slots} integers "
                                 f"in (-{params.slots}, {params.slots}) expected")
    return params, meta["backend"], steps


def _params_from_meta(m: Any) -> CKKSParams:
    if not isinstance(m, dict) or set(m) != {"name", "n", "bits", "scale_bits"}:
        raise SerializationError("malformed context parameters: expected name, n, bits, scale_bits")
    name, n, bits, scale_bits = m["name"], m["n"], m["bits"], m["scale_bits"]
    if not isinstance(name, str) or not 0 < len(name) <= 64:
        raise SerializationError("malformed context parameters: name must be a string of 1-64 characters")
    if type(n) is not int or n not in (4096, 8192, 16384, 32768):
        raise SerializationError(f"unsupported ring degree {n!r}")
    # SEAL's primes are at most 60 bits, and no 128-bit-secure chain at N <= 32768 has more than 64 of them
    if (not isinstance(bits, list) or not 2 <= len(bits) <= 64
            or not all(type(b) is int and 1 <= b <= 60 for b in bits)):
        raise SerializationError(f"unsupported modulus chain {str(bits)[:80]}")
    if type(scale_bits) is not int or not 0 < scale_bits < 61:
        raise SerializationError(f"unsupported scale 2^{str(scale_bits)[:20]}")
    params = CKKSParams(name, n, tuple(bits), scale_bits)
    known = get_params(params.name) if params.name in ("test", "fast", "deep") else None
    if known is not None and known != params:
        raise SerializationError(f"parameters named {params.name!r} differ from that preset")
    return params


def _looks_secret(data: Any) -> bool:
    try:
        serialize.unpack(data, "secret_context")
        return True
    except SerializationError:
        return False


@contextlib.contextmanager
def load_context(ctx: Any) -> Iterator[PublicContext]:
    """Resolve unpickled EncTensors against ``ctx`` (a PublicContext, or a SecretContext/KeyOwner's
    ``public()``) inside the block (``ckks/registry.py``).

    >>> with load_context(PublicContext.from_bytes(public_bytes)):   # doctest: +SKIP
    ...     state = torch.load("model.pt")
    """
    public = ctx if isinstance(ctx, PublicContext) else getattr(ctx, "public", None)
    if public is None:
        raise TypeError(f"load_context takes a PublicContext or SecretContext, got {type(ctx).__name__}")
    public = public if isinstance(public, PublicContext) else public()
    with registry.pin(public):
        yield public
