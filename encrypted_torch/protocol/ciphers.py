"""Bytes for what travels inside messages: bare ciphertext lists (refreshes) and named EncTensors.

Decoding needs the receiver's context, and checks what the receiver relies on: the key's
fingerprint, each ciphertext's recorded level/scale/size against what SEAL reports, counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..ckks import cipher_codec, serialize
from ..ckks.evaluator import Cipher
from ..errors import ContextMismatchError
from ..storage.jsonio import loads_strict
from ..tensor.enctensor import EncTensor
from .errors import ProtocolError

KIND = "cipher_list"


def encode_ciphers(ctx: Any, ciphers: Sequence[Cipher]) -> bytes:
    """Frame ciphertexts with their levels and scales under ``ctx``'s fingerprint."""
    return encode_payloads(ctx.fingerprint, *cipher_codec.dump(ctx, ciphers))


def encode_payloads(fingerprint: str, records: Sequence[Any], payloads: Sequence[bytes]) -> bytes:
    """``encode_ciphers`` of ciphertexts already in bytes (``cipher_codec`` records, e.g. seeded
    fresh encryptions, which exist only as bytes); ``decode_ciphers`` reads both alike."""
    sections = {"meta": serialize.dumps_json({"context": fingerprint, "ciphers": [list(r) for r in records]})}
    sections.update((f"c{i}", raw) for i, raw in enumerate(payloads))
    return serialize.pack(KIND, sections)


def decode_ciphers(data: bytes, ctx: Any, expected: int | None = None) -> list[Cipher]:
    """Inverse of ``encode_ciphers``; ``expected``: the count the receiver asked for."""
    sections = serialize.unpack(data, KIND)
    (meta_raw,) = serialize.require(sections, "meta")
    meta = loads_strict(meta_raw, "cipher list metadata")
    if not isinstance(meta, dict) or set(meta) != {"context", "ciphers"} or not isinstance(meta["ciphers"], list):
        raise ProtocolError("malformed cipher list metadata")
    if not isinstance(meta["context"], str) or meta["context"] != ctx.fingerprint:
        raise ContextMismatchError("ciphertexts encrypted under another key than this session's")
    info = meta["ciphers"]
    if expected is not None and len(info) != expected:
        raise ProtocolError(f"{len(info)} ciphertexts where {expected} were asked for")
    if len(sections) != len(info) + 1:
        raise ProtocolError("cipher list section count does not match its metadata")
    payloads = serialize.require(sections, *(f"c{i}" for i in range(len(info))))
    return cipher_codec.load(ctx, info, payloads, error=ProtocolError)


def encode_tensors(tensors: dict[str, EncTensor]) -> dict[str, bytes]:
    """EncTensor bytes by name (a message's ``dict[str, bytes]`` field)."""
    return {k: v.to_bytes() for k, v in tensors.items()}


def decode_tensors(raw: dict[str, bytes], ctx: Any, like: dict[str, EncTensor] | None = None) -> dict[str, EncTensor]:
    """EncTensors by name; with ``like``, names and layouts must match it (a reply to what was sent)."""
    out = {k: EncTensor.from_bytes(v, ctx) for k, v in raw.items()}
    if like is not None:
        if set(out) != set(like):
            raise ProtocolError(f"tensors {sorted(out)} in reply to {sorted(like)}")
        for k, t in out.items():
            if t.layout != like[k].layout:
                raise ProtocolError(f"tensor {k!r} came back as {t.layout}, sent as {like[k].layout}")
    return out


def decode_tensor_list(raw: list[bytes], ctx: Any) -> list[EncTensor]:
    """EncTensors from a message's ``list[bytes]`` field, under ``ctx``."""
    return [EncTensor.from_bytes(v, ctx) for v in raw]


def check_fresh(ciphers: Sequence[Cipher], level: int) -> None:
    """A refresh reply must be at the level asked (the top unless the request named one):
    anything else is a wrong or replayed answer."""
    off = [i for i, c in enumerate(ciphers) if c.level != level]
    if off:
        raise ProtocolError(f"refreshed ciphertexts {off[:5]} are not at the asked level {level}")

