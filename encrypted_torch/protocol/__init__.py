"""The client-server protocol: message types, their codec, authentication, and the channel.

Every message type is a dataclass in ``messages``; docs/protocol.md documents each one and
the order they are exchanged in.
"""

from .auth import Sealer, check_token, read_token
from .channel import Channel, client_handshake, server_handshake
from .errors import (
    AuthenticationError,
    ConnectionLostError,
    JobConfigError,
    MessageTooLargeError,
    ProtocolError,
    RemoteError,
    SessionError,
)
from .messages import Message, decode, message_types

__all__ = [
    "AuthenticationError", "Channel", "ConnectionLostError", "JobConfigError", "Message", "MessageTooLargeError",
    "ProtocolError", "RemoteError", "Sealer", "SessionError", "check_token", "client_handshake", "decode",
    "message_types", "read_token", "server_handshake",
]
