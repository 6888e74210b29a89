"""A message channel over one WebSocket connection: size limit, sealing, typed errors.

Works with websockets' sync ``ServerConnection`` and ``ClientConnection`` alike; every failure
of the connection or of a message surfaces as an encrypted_torch error.
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

from websockets.exceptions import ConnectionClosed, WebSocketException

from ..errors import EncTorchError
from . import auth
from .errors import ConnectionLostError, MessageTooLargeError, ProtocolError, remote_error
from .messages import (
    NONCE_BYTES,
    PROTOCOL_VERSION,
    ClientHello,
    ErrorMessage,
    Message,
    ServerHello,
    Welcome,
    decode,
)

M = TypeVar("M", bound=Message)
DEFAULT_MAX_MESSAGE_BYTES = 256 << 20
DEFAULT_CHUNK_BYTES = 8 << 20
CLOSE_POLICY, CLOSE_TOO_BIG = 1008, 1009
PREAUTH_MAX_BYTES = 1 << 16  # hellos are small: a stranger's frame is refused past this, before it is buffered


class Channel:
    """Send and receive Messages; after the handshake every message is sealed (``auth.Sealer``)."""

    def __init__(self, ws: Any, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 peer_max_message_bytes: int | None = None) -> None:
        self.ws = ws
        self.max_message_bytes = max_message_bytes
        self.peer_max_message_bytes = peer_max_message_bytes or max_message_bytes
        self.sealer: auth.Sealer | None = None
        self.handshaking = True  # until the Welcome: an unsealed ErrorMessage may explain a refusal
        self.bytes_sent = self.bytes_received = 0

    def send(self, msg: Message) -> None:
        """Encode, check against the peer's size limit, seal and send one message."""
        body = msg.encode()
        if len(body) > self.peer_max_message_bytes:
            raise MessageTooLargeError(f"a {msg.TYPE} message of {len(body)} bytes is over the peer's "
                                       f"{self.peer_max_message_bytes}-byte limit; raise --max-message-mb")
        wire = self.sealer.seal(body) if self.sealer else body
        try:
            self.ws.send(wire)
        except (ConnectionClosed, OSError, WebSocketException) as err:
            self._raise_pending_error()  # the peer may have said why it closed (a refused upload)
            raise _lost(err) from None
        self.bytes_sent += len(wire)

    def _raise_pending_error(self) -> None:
        """Raise the peer's ErrorMessage if one arrived before the connection closed."""
        for _ in range(64):  # bounded: progress messages may precede it
            try:
                wire = self.ws.recv(0.5)
            except (TimeoutError, ConnectionClosed, OSError, WebSocketException):
                return
            if isinstance(wire, bytes):
                try:
                    body = self.sealer.open(wire) if self.sealer else wire
                    msg = decode(body, self.max_message_bytes)
                except EncTorchError:
                    return
                if isinstance(msg, ErrorMessage):
                    raise remote_error(msg.error, msg.message)

    def recv(self, timeout: float | None = None) -> Message:
        """The next message; an ErrorMessage from the peer is raised as a RemoteError."""
        try:
            wire = self.ws.recv(timeout)
        except TimeoutError:
            raise ConnectionLostError(f"no message from the peer within {timeout} s") from None
        except (ConnectionClosed, OSError, WebSocketException) as err:
            raise _lost(err) from None
        if isinstance(wire, str):
            raise ProtocolError("a text frame: this protocol speaks binary messages only")
        self.bytes_received += len(wire)
        limit = self.max_message_bytes + (auth.HEADER_BYTES if self.sealer else 0)
        if len(wire) > limit:
            raise MessageTooLargeError(f"message of {len(wire)} bytes is over the {limit}-byte limit")
        body = self._open(wire) if self.sealer else wire
        msg = decode(body, self.max_message_bytes)
        if isinstance(msg, ErrorMessage):
            raise remote_error(msg.error, msg.message)
        return msg

    def _open(self, wire: bytes) -> bytes:
        assert self.sealer is not None
        try:
            return self.sealer.open(wire)
        except auth.AuthenticationError:
            if self.handshaking:  # the server refused our hello before it could seal anything
                try:
                    msg = decode(wire, self.max_message_bytes)
                except EncTorchError:
                    msg = None
                if isinstance(msg, ErrorMessage):
                    raise remote_error(msg.error, msg.message) from None
            raise

    def expect(self, cls: type[M], timeout: float | None = None) -> M:
        """The next message, which must be a ``cls`` (else ProtocolError)."""
        msg = self.recv(timeout)
        if not isinstance(msg, cls):
            raise ProtocolError(f"expected {cls.TYPE}, got {msg.TYPE}")
        return msg

    def fail(self, err: BaseException) -> None:
        """Tell the peer why (best effort) and close the connection."""
        kind = type(err).__name__ if isinstance(err, EncTorchError) else "InternalError"
        text = str(err) if isinstance(err, EncTorchError) else "internal server error (see the server log)"
        if not isinstance(err, ConnectionLostError):
            try:
                self.send(ErrorMessage(kind, text[:4000]))
            except EncTorchError:
                pass
        self.close(CLOSE_TOO_BIG if isinstance(err, MessageTooLargeError) else CLOSE_POLICY, kind)

    def close(self, code: int = 1000, reason: str = "") -> None:
        try:
            self.ws.close(code, reason[:100])
        except (OSError, WebSocketException):
            pass


def _lost(err: BaseException) -> EncTorchError:
    if isinstance(err, ConnectionClosed):
        codes = {f.code for f in (err.rcvd, err.sent) if f is not None}
        if CLOSE_TOO_BIG in codes:
            return MessageTooLargeError("the connection was closed because a message was over the size limit")
        reason = err.rcvd.reason if err.rcvd is not None else ""
        return ConnectionLostError(f"connection closed ({', '.join(map(str, sorted(codes))) or 'no close frame'}"
                                   f"{': ' + reason if reason else ''})")
    return ConnectionLostError(f"connection failed: {err}")


def server_handshake(ws: Any, token: bytes, max_message_bytes: int, chunk_bytes: int,
                     timeout: float) -> tuple[Channel, ClientHello]:
    """Server side, up to (not including) the Welcome: returns a sealed channel and the hello."""
    channel = Channel(ws, max_message_bytes=min(max_message_bytes, PREAUTH_MAX_BYTES))
    server_nonce = os.urandom(NONCE_BYTES)
    channel.send(ServerHello(PROTOCOL_VERSION, server_nonce, max_message_bytes, chunk_bytes))
    hello = channel.expect(ClientHello, timeout)
    if hello.version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {hello.version}; this server speaks {PROTOCOL_VERSION}")
    key = auth.session_key(token, server_nonce, hello.client_nonce)
    auth.verify_hello(key, hello.version, hello.session_id, hello.fingerprint, hello.mac)
    c2s, s2c = auth.direction_keys(key)
    channel.sealer = auth.Sealer(send_key=s2c, recv_key=c2s)
    channel.max_message_bytes = channel.peer_max_message_bytes = max_message_bytes
    channel.handshaking = False
    raise_frame_limit(ws, max_message_bytes + auth.HEADER_BYTES)
    return channel, hello


def raise_frame_limit(ws: Any, max_bytes: int) -> None:
    """Let an authenticated peer send messages up to ``max_bytes`` (the server listens with PREAUTH_MAX_BYTES).

    websockets reads ``max_message_size`` when the next frame starts; the client sends nothing
    between its hello and our Welcome, so the new limit applies from its first request on.
    """
    protocol = getattr(ws, "protocol", None)
    if protocol is not None and hasattr(protocol, "max_message_size"):
        protocol.max_message_size = max_bytes


def client_handshake(ws: Any, token: bytes, session_id: str, fingerprint: str, max_message_bytes: int,
                     timeout: float) -> tuple[Channel, Welcome, ServerHello]:
    """Client side: authenticate, and check that the server holds the token (its sealed Welcome)."""
    channel = Channel(ws, max_message_bytes=min(max_message_bytes, PREAUTH_MAX_BYTES))
    server_hello = channel.expect(ServerHello, timeout)
    if server_hello.version != PROTOCOL_VERSION:
        raise ProtocolError(f"server speaks protocol version {server_hello.version}, we {PROTOCOL_VERSION}")
    client_nonce = os.urandom(NONCE_BYTES)
    key = auth.session_key(token, server_hello.server_nonce, client_nonce)
    mac = auth.hello_mac(key, PROTOCOL_VERSION, session_id, fingerprint)
    channel.send(ClientHello(PROTOCOL_VERSION, client_nonce, session_id, fingerprint, mac))
    c2s, s2c = auth.direction_keys(key)
    channel.sealer = auth.Sealer(send_key=c2s, recv_key=s2c)
    channel.max_message_bytes = max_message_bytes
    channel.peer_max_message_bytes = server_hello.max_message_bytes
    welcome = channel.expect(Welcome, timeout)  # sealed: the server holds the token
    channel.handshaking = False
    raise_frame_limit(ws, max_message_bytes + auth.HEADER_BYTES)  # the client connects with PREAUTH_MAX_BYTES
    return channel, welcome, server_hello
