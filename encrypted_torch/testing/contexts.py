"""Key owners' contexts made once per process, shared by the fixtures and the strategies."""

from __future__ import annotations

from ..ckks.secret import SecretContext

BACKENDS = ("plain", "seal")
_MADE: dict[tuple[str, str], SecretContext] = {}


def secret_context(preset: str = "test", backend: str = "plain") -> SecretContext:
    """The ``SecretContext`` of ``preset`` on ``backend``, with all ±2^i rotation keys, made on the first
    call and returned by every later one (SEAL keygen takes seconds; a test session pays it once).

    The plaintext backend (``"plain"``) runs the same algorithms on exact float64 slot vectors: no
    noise and no encryption, for exact checks; ``"seal"`` is real CKKS.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    if (preset, backend) not in _MADE:
        _MADE[preset, backend] = SecretContext.create(preset, backend=backend)
    return _MADE[preset, backend]


def known_secret(fingerprint: str) -> SecretContext | None:
    """The kit's own context whose key has ``fingerprint``, if it made one (None otherwise)."""
    return next((s for s in _MADE.values() if s.fingerprint == fingerprint), None)
