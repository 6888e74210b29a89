"""Peer authentication with a shared token, and per-message integrity (HMAC-SHA256).

Handshake (docs/protocol.md): the server sends a fresh nonce; the client answers with its own
nonce and ``mac = HMAC(k, "hello" | version | session_id | fingerprint)``, where
``k = HMAC(token, "encrypted_torch/v1" | server_nonce | client_nonce)``; only a token holder can
compute it, and the nonces make it useless to replay. Both sides then derive one key per
direction from ``k``. Every later message travels as ``seq (8 bytes) | tag (32) | body`` with
``tag = HMAC(key, seq | body)`` and seq counting 0, 1, 2, ... per direction, so a forged,
altered, replayed, dropped or reordered message is an AuthenticationError. The first sealed
message is the server's Welcome: it proves to the client that the server holds the token too.

This authenticates; it does not hide. Ciphertexts need no hiding; to hide sizes and the stop
bit from the network as well, serve TLS (``--certfile``; clients use ``wss://`` and ``--cafile``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from pathlib import Path

from .errors import AuthenticationError

MIN_TOKEN_BYTES = 16
TOKEN_ENV = "ENCRYPTED_TORCH_TOKEN"
HEADER_BYTES = 8 + 32
_LABEL = b"encrypted_torch/v1"


def check_token(token: str | bytes) -> bytes:
    """The token as bytes; refuses tokens too short to resist guessing."""
    raw = token.encode() if isinstance(token, str) else bytes(token)
    raw = raw.strip()
    if len(raw) < MIN_TOKEN_BYTES:
        raise AuthenticationError(f"the shared token must have at least {MIN_TOKEN_BYTES} characters "
                                  "(e.g. python -c 'import secrets; print(secrets.token_hex(32))')")
    return raw


def read_token(path: str | Path | None = None) -> bytes:
    """The token from a file, else from the ENCRYPTED_TORCH_TOKEN environment variable."""
    if path is not None:
        return check_token(Path(path).read_bytes())
    value = os.environ.get(TOKEN_ENV)
    if not value:
        raise AuthenticationError(f"no token: pass --token-file or set {TOKEN_ENV}")
    return check_token(value)


def session_key(token: bytes, server_nonce: bytes, client_nonce: bytes) -> bytes:
    """k: the connection's root key; only a token holder who saw both nonces can compute it."""
    return hmac.new(token, _LABEL + server_nonce + client_nonce, hashlib.sha256).digest()


def hello_mac(key: bytes, version: int, session_id: str, fingerprint: str) -> bytes:
    """The ClientHello's proof of the token, bound to what the hello asks for."""
    text = f"hello|{version}|{session_id}|{fingerprint}".encode()
    return hmac.new(key, text, hashlib.sha256).digest()


def direction_keys(key: bytes) -> tuple[bytes, bytes]:
    """(client→server key, server→client key)."""
    return (hmac.new(key, b"c2s", hashlib.sha256).digest(), hmac.new(key, b"s2c", hashlib.sha256).digest())


class Sealer:
    """Seals outgoing and opens incoming message bodies for one side of one connection."""

    def __init__(self, send_key: bytes, recv_key: bytes) -> None:
        self._send_key, self._recv_key = send_key, recv_key
        self._send_seq = self._recv_seq = 0

    def seal(self, body: bytes) -> bytes:
        """``seq | tag | body`` with the next outgoing sequence number."""
        head = struct.pack(">Q", self._send_seq)
        self._send_seq += 1
        return head + hmac.new(self._send_key, head + body, hashlib.sha256).digest() + body

    def open(self, wire: bytes) -> bytes:
        """The body of the next incoming message; AuthenticationError if forged, altered or out of order."""
        if len(wire) < HEADER_BYTES:
            raise AuthenticationError(f"a sealed message of {len(wire)} bytes is shorter than its header")
        head, tag, body = wire[:8], wire[8:HEADER_BYTES], wire[HEADER_BYTES:]
        want = hmac.new(self._recv_key, head + body, hashlib.sha256).digest()
        if not hmac.compare_digest(tag, want):
            raise AuthenticationError("message authentication failed: altered, truncated, or not from the peer")
        (seq,) = struct.unpack(">Q", head)
        if seq != self._recv_seq:
            raise AuthenticationError(f"message number {seq} where {self._recv_seq} was due: replayed or dropped")
        self._recv_seq += 1
        return body


def verify_hello(key: bytes, version: int, session_id: str, fingerprint: str, mac: bytes) -> None:
    """AuthenticationError unless ``mac`` is the hello MAC under ``key`` (constant-time compare)."""
    if not hmac.compare_digest(mac, hello_mac(key, version, session_id, fingerprint)):
        raise AuthenticationError("the client does not hold the server's token")

