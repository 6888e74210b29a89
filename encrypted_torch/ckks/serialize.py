"""Framing for everything we serialize: magic, kind, named sections, and a SHA-256 trailer; strict JSON.

The checksum catches truncation and bit flips before any byte reaches SEAL's loader. Both
decoders take bytes from strangers, so every failure is a SerializationError and every size
is bounded before anything is buffered or recursed into.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import struct
from typing import Any

import numpy as np

from ..errors import SerializationError

MAGIC = b"ETORCH"
VERSION = 1
_DIGEST = 32
MAX_SECTIONS = 1 << 16
_SECTION_OVERHEAD = 2 + 8  # a section's name length and payload length fields
MAX_JSON_BYTES = 64 << 20
MAX_JSON_DEPTH = 32
_MAX_INT_DIGITS = 20  # every integer we write fits in 64 bits (RNG state words included)


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
        if count > MAX_SECTIONS or count * _SECTION_OVERHEAD > len(body) - pos:
            raise SerializationError(f"{count} sections do not fit in {len(body)} bytes")
        sections: dict[str, bytes] = {}
        for _ in range(count):
            raw_name, pos = _get(body, pos)
            (length,) = struct.unpack_from("<Q", body, pos)
            pos += 8
            if length > len(body) - pos:
                raise SerializationError(f"a section of {length} bytes runs past the end of the bytes")
            name = raw_name.decode()
            if name in sections:
                raise SerializationError(f"section {name[:40]!r} appears twice")
            sections[name] = body[pos : pos + length]
            pos += length
    except (struct.error, UnicodeDecodeError) as err:
        raise SerializationError(f"malformed framing: {err}") from None
    if pos != len(body):
        raise SerializationError("trailing bytes after the last section")
    if found_kind.decode(errors="replace") != kind:
        raise SerializationError(f"expected a serialized {kind}, got {found_kind.decode(errors='replace')}")
    return sections


def dumps_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True).encode()


def loads_json(data: bytes | str, what: str = "metadata", *, max_bytes: int = MAX_JSON_BYTES,
               max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse JSON from a stranger: the one strict loader (``storage.jsonio.loads_strict`` is this).

    Refuses more than ``max_bytes``, nesting deeper than ``max_depth``, integers beyond 64 bits,
    NaN, ±Infinity and numbers that overflow to them, duplicate keys, and strings that are not
    valid Unicode (lone surrogates); every failure is a SerializationError naming ``what``.
    """
    if not isinstance(data, (bytes, bytearray, memoryview, str)):
        raise SerializationError(f"{what}: expected JSON bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise SerializationError(f"{what}: {len(data)} bytes of JSON is over the {max_bytes}-byte limit")
    try:
        text = data if isinstance(data, str) else bytes(data).decode("utf-8")
        # The C parser counts its own recursion (RecursionError, caught below, past ~1000 levels);
        # _check_tree then enforces the real bound without recursing, before any caller walks the tree.
        obj = json.loads(text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_reject_constant,
                         object_pairs_hook=_unique_keys)
        _check_tree(obj, max_depth)
    except SerializationError as err:
        raise SerializationError(f"malformed {what}: {err}") from None
    except RecursionError:
        raise SerializationError(f"malformed {what}: nested deeper than {max_depth} levels") from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError and UnicodeEncodeError are ValueErrors
        raise SerializationError(f"malformed {what}: {err}") from None
    return obj


def _parse_int(digits: str) -> int:
    if len(digits.lstrip("-")) > _MAX_INT_DIGITS or not -(2**64) < (value := int(digits)) < 2**64:
        raise SerializationError(f"integer {digits[:24]}… does not fit in 64 bits")
    return value


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise SerializationError(f"number {text[:24]} is out of the float range")
    return value


def _reject_constant(name: str) -> Any:
    raise SerializationError(f"non-finite number {name}")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise SerializationError("duplicate key in a JSON object")
    return out


def _check_tree(obj: Any, max_depth: int) -> None:
    """Nesting depth, and strings that are valid Unicode: a lone surrogate (``"\\ud800"``) parses
    but cannot be encoded, written to disk or logged later."""
    stack = [(obj, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if not item.isascii():
                item.encode("utf-8")  # UnicodeEncodeError is a ValueError
        elif isinstance(item, (dict, list)):
            if depth >= max_depth:
                raise SerializationError(f"nested deeper than {max_depth} levels")
            if isinstance(item, dict):
                stack.extend((k, depth) for k in item)
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))


_NPY_DTYPES = {"|b1", "|u1", "|i1", "<i2", "<i4", "<i8", "<f2", "<f4", "<f8", "<c16"}


def load_npy(raw: bytes, what: str = "array") -> np.ndarray:
    """A NumPy ``.npy`` array from a stranger's bytes, without pickle and without trusting its header:
    plain little-endian numbers only, and the shape must account for exactly the bytes present
    (``np.load`` would allocate whatever the header claims first). SerializationError if not."""
    buf = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(buf)
        if version not in ((1, 0), (2, 0), (3, 0)):
            raise ValueError(f"unsupported .npy version {version}")
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(buf)
    except Exception as err:  # noqa: BLE001 - numpy parses the header text with tokenize and literal_eval,
        # which raise TokenError, SyntaxError, ValueError, MemoryError, ... on hostile text
        raise SerializationError(f"{what}: not a .npy array ({type(err).__name__}: {str(err)[:120]})") from None
    if dtype.str not in _NPY_DTYPES:
        raise SerializationError(f"{what}: dtype {dtype.str} is not a plain number type")
    if len(shape) > 32 or not all(type(d) is int and 0 <= d < 2**48 for d in shape):
        raise SerializationError(f"{what}: shape {str(shape)[:80]} is not a shape")
    count = math.prod(shape)
    offset = buf.tell()
    if count * dtype.itemsize != len(raw) - offset:
        raise SerializationError(f"{what}: shape {shape} needs {count * dtype.itemsize} bytes, "
                                 f"{len(raw) - offset} present")
    flat = np.frombuffer(raw, dtype=dtype, count=count, offset=offset)
    return flat.reshape(shape, order="F" if fortran else "C").copy()


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


def cipher_meta(item: Any, what: str, top_level: int,
                error: type[Exception] = SerializationError) -> tuple[int, float, int]:
    """A ciphertext's recorded [level, scale, size], checked before any float() or SEAL call; ``error``
    (an EncTorchError subclass) names the decoder's own error type."""
    if (not isinstance(item, list) or len(item) != 3 or type(item[0]) is not int or type(item[2]) is not int
            or type(item[1]) not in (int, float)):
        raise error(f"{what}: metadata must be [level, scale, size]")
    level, scale, size = item
    if type(scale) is int and not 0 < scale < 2**63:  # float() of a huge int overflows
        raise error(f"{what}: scale {scale} out of range")
    scale = float(scale)
    if not 0 <= level <= top_level or size not in (2, 3) or not 0 < scale < math.inf:
        raise error(f"{what}: invalid level/scale/size {level, scale, size}")
    return level, scale, size


def read_head(prefix: bytes, max_first: int) -> tuple[str, str, bytes]:
    """(kind, first section's name, its payload) from the first bytes of a ``pack`` output, before the
    rest has arrived (no checksum yet): lets a receiver refuse an upload on its first chunk.
    SerializationError when ``prefix`` is not our framing, or does not hold the whole first section,
    or that section is over ``max_first`` bytes."""
    if not prefix.startswith(MAGIC) or len(prefix) < len(MAGIC) + 1:
        raise SerializationError("not encrypted_torch framing (bad magic or too short)")
    if prefix[len(MAGIC)] != VERSION:
        raise SerializationError(f"unsupported format version {prefix[len(MAGIC)]}")
    try:
        kind, pos = _get(prefix, len(MAGIC) + 1)
        pos += 4  # section count
        name, pos = _get(prefix, pos)
        (length,) = struct.unpack_from("<Q", prefix, pos)
        pos += 8
    except struct.error:
        raise SerializationError("the bytes end inside the header") from None
    if length > max_first or pos + length > len(prefix):
        raise SerializationError(f"the first section must arrive whole and hold at most {max_first} bytes")
    try:
        return kind.decode(), name.decode(), prefix[pos : pos + length]
    except UnicodeDecodeError:
        raise SerializationError("a kind or section name is not UTF-8") from None
