"""Strict JSON parsing for bytes from disk or the network: finite numbers, bounded nesting."""

from __future__ import annotations

import json
from typing import Any

from ..errors import SerializationError


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name}")


def loads_strict(raw: bytes | str, what: str = "JSON") -> Any:
    """Parse JSON, refusing NaN/Infinity; every failure (including deep nesting) is a SerializationError."""
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise SerializationError(f"malformed {what}: {err}") from None
