"""Errors of the client-server protocol (all EncTorchError subclasses, so callers catch one family)."""

from __future__ import annotations

import sys

from ..errors import EncTorchError, SerializationError


class ProtocolError(SerializationError):
    """A message that is malformed, of an unknown type, or not allowed at this point of the protocol."""


class MessageTooLargeError(ProtocolError):
    """A message over the agreed maximum size (refused before it is parsed)."""


class AuthenticationError(ProtocolError):
    """The peer does not hold the shared token, or a message's MAC or sequence number is wrong."""


class ConnectionLostError(EncTorchError, ConnectionError):
    """The connection closed or timed out before the exchange finished; the session can be resumed."""


class SessionError(EncTorchError):
    """The session is unknown, belongs to another key, is busy, or is not at the stage the request needs."""


class JobConfigError(EncTorchError, ValueError):
    """A training configuration the server cannot run (unknown model, bad learning rate, ...)."""


class RemoteError(EncTorchError):
    """The peer reported an error and closed the connection; ``kind`` is its error class name.

    ``remote_error`` makes it an instance of the local class of that name too, so
    ``except KeyRoleError`` catches a server's refusal of a secret key.
    """

    def __init__(self, kind: str, message: str) -> None:
        self.kind, self.message = kind, message
        Exception.__init__(self, f"the peer reported {kind}: {message}")  # bases' __init__ differ


_REMOTE_CLASSES: dict[str, type[RemoteError]] = {}  # only names of our own error classes: a bounded set


def remote_error(kind: str, message: str) -> RemoteError:
    """A RemoteError that is also an instance of the encrypted_torch error class named ``kind``.

    ``kind`` comes from the peer: a name that is not one of our error classes gives a plain
    RemoteError and is not remembered, so a peer cannot grow this module's cache.
    """
    cls = _REMOTE_CLASSES.get(kind)
    if cls is None:
        base = _local_error_class(kind)
        if base is None:
            return RemoteError(kind if kind.isidentifier() and len(kind) <= 64 else "UnknownError", message)
        cls = _REMOTE_CLASSES.setdefault(kind, type(f"Remote{kind}", (RemoteError, base), {}))
    return cls(kind, message)


def _local_error_class(kind: str) -> type[EncTorchError] | None:
    from .. import errors
    from ..storage import errors as storage_errors

    if not kind.isidentifier():
        return None
    for module in (errors, storage_errors, sys.modules[__name__]):
        candidate = getattr(module, kind, None)
        if isinstance(candidate, type) and issubclass(candidate, EncTorchError) and candidate is not RemoteError:
            return candidate
    return None


def peer_text(text: object, limit: int = 300) -> str:
    """Text a peer chose, made safe for one log line: control and invisible characters escaped, length capped."""
    raw = str(text)
    cut = raw[:limit]
    safe = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in cut)
    return safe + (f"… ({len(raw)} chars)" if len(raw) > limit else "")
