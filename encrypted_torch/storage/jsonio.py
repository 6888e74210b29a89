"""Strict JSON parsing for bytes from disk or the network (one loader: ``ckks.serialize.loads_json``)."""

from __future__ import annotations

from typing import Any

from ..ckks.serialize import MAX_JSON_BYTES, MAX_JSON_DEPTH, loads_json


def loads_strict(raw: bytes | str, what: str = "JSON", *, max_bytes: int = MAX_JSON_BYTES,
                 max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse JSON with bounded size and nesting, 64-bit integers, finite numbers, no duplicate keys;
    every failure is a SerializationError naming ``what`` (see ``ckks.serialize.loads_json``)."""
    return loads_json(raw, what, max_bytes=max_bytes, max_depth=max_depth)
