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


_REMOTE_CLASSES: dict[str, type[RemoteError]] = {}


def remote_error(kind: str, message: str) -> RemoteError:
    """A RemoteError that is also an instance of the encrypted_torch error class named ``kind``."""
    from .. import errors
    from ..storage import errors as storage_errors

    if kind not in _REMOTE_CLASSES:
        base = None
        for module in (errors, storage_errors, sys.modules[__name__]):
            candidate = getattr(module, kind, None)
            if isinstance(candidate, type) and issubclass(candidate, EncTorchError) and candidate is not RemoteError:
                base = candidate
                break
        _REMOTE_CLASSES[kind] = type(f"Remote{kind}", (RemoteError, base), {}) if base else RemoteError
    return _REMOTE_CLASSES[kind](kind, message)
