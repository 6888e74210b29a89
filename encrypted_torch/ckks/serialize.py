"""Framing for everything we serialize: magic, kind, named sections, and a SHA-256 trailer.

The checksum catches truncation and bit flips before any byte reaches SEAL's loader.
"""

from __future__ import annotations

import hashlib
import json
import struct
from typing import Any

from ..errors import SerializationError

MAGIC = b"ETORCH"
VERSION = 1
_DIGEST = 32
MAX_SECTIONS = 1 << 16


def pack(kind: str, sections: dict[str, bytes]) -> bytes:
    """Frame named byte sections under a kind tag (e.g. ``"public_context"``)."""
    out = bytearray(MAGIC)
    out += struct.pack("<B", VERSION)
    _put(out, kind.encode())
    out += struct.pack("<I", len(sections))
    for name, payload in sections.items():
        _put(out, name.encode())
        out += struct.pack("<Q", len(payload))
        out += payload
    out += hashlib.sha256(out).digest()
    return bytes(out)


def unpack(data: bytes, kind: str) -> dict[str, bytes]:
    """Inverse of ``pack``; any malformed, truncated or altered input raises SerializationError."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SerializationError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < len(MAGIC) + 1 + _DIGEST or not data.startswith(MAGIC):
        raise SerializationError("not encrypted_torch bytes (bad magic or too short)")
    body, digest = data[:-_DIGEST], data[-_DIGEST:]
    if hashlib.sha256(body).digest() != digest:
        raise SerializationError("checksum mismatch: the bytes are truncated or corrupted")
    pos = len(MAGIC)
    if body[pos] != VERSION:
        raise SerializationError(f"unsupported format version {body[pos]}")
    pos += 1
    try:
        found_kind, pos = _get(body, pos)
        (count,) = struct.unpack_from("<I", body, pos)
        pos += 4
        if count > MAX_SECTIONS:
            raise SerializationError(f"{count} sections is more than any valid object has")
        sections: dict[str, bytes] = {}
        for _ in range(count):
            name, pos = _get(body, pos)
            (length,) = struct.unpack_from("<Q", body, pos)
            pos += 8
            if pos + length > len(body):
                raise SerializationError("a section runs past the end of the bytes")
            sections[name.decode()] = body[pos : pos + length]
            pos += length
    except (struct.error, UnicodeDecodeError) as err:
        raise SerializationError(f"malformed framing: {err}") from err
    if pos != len(body):
        raise SerializationError("trailing bytes after the last section")
    if found_kind.decode(errors="replace") != kind:
        raise SerializationError(f"expected a serialized {kind}, got {found_kind.decode(errors='replace')}")
    return sections


def dumps_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True).encode()


def loads_json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as err:
        raise SerializationError(f"malformed metadata: {err}") from err


def require(sections: dict[str, bytes], *names: str) -> list[bytes]:
    missing = [n for n in names if n not in sections]
    if missing:
        raise SerializationError(f"missing section(s) {missing}")
    return [sections[n] for n in names]


def _put(out: bytearray, raw: bytes) -> None:
    out += struct.pack("<H", len(raw))
    out += raw


def _get(body: bytes, pos: int) -> tuple[bytes, int]:
    (n,) = struct.unpack_from("<H", body, pos)
    pos += 2
    if pos + n > len(body):
        raise SerializationError("a name runs past the end of the bytes")
    return body[pos : pos + n], pos + n
