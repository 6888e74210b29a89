"""Protocol messages, their codec, authentication and sealing: round trips, and only typed errors on hostile bytes."""

from __future__ import annotations

import queue
import re
import threading
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

import encrypted_torch as et
from encrypted_torch.ckks import serialize
from encrypted_torch.errors import EncTorchError
from encrypted_torch.protocol import (
    AuthenticationError,
    MessageTooLargeError,
    ProtocolError,
    RemoteError,
    Sealer,
    auth,
    check_token,
    client_handshake,
    decode,
    message_types,
    server_handshake,
)
from encrypted_torch.protocol.channel import Channel
from encrypted_torch.protocol.ciphers import decode_ciphers, decode_tensors, encode_ciphers, encode_tensors
from encrypted_torch.protocol.errors import remote_error
from encrypted_torch.protocol.messages import ErrorMessage, FileChunk, Progress, RefreshRequest

TOKEN = b"correct horse battery staple 42"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"

_hex = st.sampled_from("0123456789abcdef")
_json = st.recursive(st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False,
                     allow_infinity=False) | st.text(max_size=10),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                max_size=3), max_leaves=12)
_BY_NAME = {  # fields whose declared bounds are narrower than their type
    "server_nonce": st.binary(min_size=32, max_size=32), "client_nonce": st.binary(min_size=32, max_size=32),
    "mac": st.binary(min_size=32, max_size=32),
    "session_id": st.just("") | st.text(_hex, min_size=32, max_size=32),
    "fingerprint": st.just("") | st.text(_hex, min_size=64, max_size=64),
    "sha256": st.text(_hex, min_size=64, max_size=64),
    "target": st.from_regex(r"[a-z]{1,8}(/[a-z0-9_]{1,8}){0,2}", fullmatch=True),
    "size": st.integers(1, 2**40), "offset": st.integers(0, 2**40), "data": st.binary(min_size=1, max_size=64),
    "request_id": st.integers(0, 2**53 - 1), "epoch": st.integers(0, 2**31 - 1), "rows": st.integers(1, 1 << 20),
    "max_message_bytes": st.integers(1 << 20, 1 << 30), "chunk_bytes": st.integers(1, 1 << 20),
    "stage": st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
    "level": st.integers(-1, 64), "index": st.integers(0, (1 << 30) - 1),
    "dataset": st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True),
}
_BY_KIND = {
    "int": st.integers(-(2**63), 2**63 - 1), "str": st.text(max_size=50), "bool": st.booleans(),
    "float": st.floats(allow_nan=False, allow_infinity=False), "bytes": st.binary(max_size=64),
    "dict": st.dictionaries(st.text(max_size=6), _json, max_size=4),
    "list[bytes]": st.lists(st.binary(max_size=32), max_size=4),
    "dict[str, bytes]": st.dictionaries(st.text(min_size=1, max_size=8), st.binary(max_size=32), max_size=4),
}


def _strategy(cls):
    if cls.TYPE == "welcome":
        return st.builds(cls, session_id=st.text(_hex, min_size=32, max_size=32), status=_BY_KIND["dict"])
    return st.builds(cls, **{f.name: _BY_NAME.get(f.name, _BY_KIND[f.type]) for f in fields(cls)})


ALL_TYPES = sorted(message_types())


@pytest.mark.parametrize("name", ALL_TYPES)
@given(data=st.data())
def test_every_message_type_round_trips(name, data):
    msg = data.draw(_strategy(message_types()[name]))
    assert decode(msg.encode()) == msg


def test_every_message_type_is_documented():
    text = DOCS.read_text()
    missing = [n for n in ALL_TYPES if f"`{n}`" not in text]
    assert not missing, f"docs/protocol.md lacks {missing}"
    assert len(ALL_TYPES) >= 20


@given(st.binary(max_size=400))
@example(b"")
@example(serialize.MAGIC + b"\x01")
def test_fuzz_decode_random_bytes(raw):
    with pytest.raises((ProtocolError, et.SerializationError)):
        decode(raw)


@given(st.sampled_from(ALL_TYPES), st.data())
def test_fuzz_decode_mutated_messages(name, data):
    good = data.draw(_strategy(message_types()[name])).encode()
    cut = data.draw(st.integers(0, len(good)))
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(good) - 1), st.integers(1, 255)), max_size=3))
    bad = bytearray(good[:cut] if data.draw(st.booleans()) else good)
    for i, x in flips:
        if i < len(bad):
            bad[i] ^= x
    if bytes(bad) == good:
        return
    with pytest.raises(et.SerializationError):
        decode(bytes(bad))


@given(st.sampled_from(ALL_TYPES + ["nope", ""]), _json,
       st.dictionaries(st.text(min_size=1, max_size=12), st.binary(max_size=16), max_size=4), st.data())
def test_fuzz_decode_well_framed_hostile_fields(name, meta, extra, data):
    """Valid framing and checksum, hostile content: reaches the field checks, which must refuse it typed."""
    if name in message_types() and data.draw(st.booleans()):  # start from a valid message, then break a field
        good = data.draw(_strategy(message_types()[name]))
        meta = serialize.loads_json(serialize.unpack(good.encode(), "message")["meta"]) | (
            {data.draw(st.text(max_size=8)): meta} if data.draw(st.booleans()) else {})
        if meta and data.draw(st.booleans()):
            meta[data.draw(st.sampled_from(sorted(meta)))] = data.draw(_json)
    sections = {"type": name.encode(), "meta": serialize.dumps_json(meta), **extra}
    try:
        decode(serialize.pack("message", sections))
    except EncTorchError as err:
        assert isinstance(err, et.SerializationError)


def test_decode_refuses_oversized_and_non_bytes():
    msg = FileChunk(0, b"x" * 2000)
    with pytest.raises(MessageTooLargeError, match="limit"):
        decode(msg.encode(), max_bytes=1000)
    with pytest.raises(ProtocolError):
        decode("text")  # type: ignore[arg-type]


def test_decoder_checks_declared_bounds():
    with pytest.raises(ProtocolError, match="request_id"):
        decode(RefreshRequest(-1, b"").encode())
    bad = serialize.pack("message", {"type": b"progress", "meta": serialize.dumps_json(
        {"epoch": True, "step": 1, "info": {}})})
    with pytest.raises(ProtocolError, match="progress.epoch"):
        decode(bad)
    assert decode(Progress(1, 2, {"a": 1}).encode()) == Progress(1, 2, {"a": 1})


# --- sealing and handshake ---------------------------------------------------------------------------------------


def _pair() -> tuple[Sealer, Sealer]:
    a, b = auth.direction_keys(auth.session_key(TOKEN, b"s" * 32, b"c" * 32))
    return Sealer(send_key=a, recv_key=b), Sealer(send_key=b, recv_key=a)


def test_sealed_messages_round_trip_in_order():
    client, server = _pair()
    for body in (b"", b"one", bytes(1000)):
        assert server.open(client.seal(body)) == body
        assert client.open(server.seal(body[::-1])) == body[::-1]


@given(st.binary(min_size=1, max_size=200), st.integers(0, 10_000), st.integers(1, 255))
def test_any_change_to_a_sealed_message_is_refused(body, where, xor):
    client, server = _pair()
    wire = bytearray(client.seal(body))
    wire[where % len(wire)] ^= xor
    with pytest.raises(AuthenticationError):
        server.open(bytes(wire))


def test_replayed_dropped_truncated_or_foreign_messages_are_refused():
    client, server = _pair()
    first, second = client.seal(b"a"), client.seal(b"b")
    with pytest.raises(AuthenticationError, match="replayed or dropped"):
        server.open(second)  # the first was dropped
    client, server = _pair()
    first = client.seal(b"a")
    server.open(first)
    with pytest.raises(AuthenticationError, match="replayed"):
        server.open(first)
    with pytest.raises(AuthenticationError):
        server.open(client.seal(b"abc")[:-1])
    with pytest.raises(AuthenticationError, match="shorter"):
        server.open(b"x" * 10)
    other = Sealer(*auth.direction_keys(auth.session_key(b"another token of enough length", b"s" * 32, b"c" * 32)))
    with pytest.raises(AuthenticationError):
        _pair()[1].open(other.seal(b"a"))


def test_tokens_must_be_long_enough():
    with pytest.raises(AuthenticationError, match="at least"):
        check_token("short")
    assert check_token(" " + TOKEN.decode() + "\n") == TOKEN


class _FakeWS:
    """One end of an in-memory WebSocket pair (what the Channel needs of a connection)."""

    def __init__(self, inbox: queue.Queue, outbox: queue.Queue) -> None:
        self.inbox, self.outbox, self.closed = inbox, outbox, None

    def send(self, data) -> None:
        self.outbox.put(data)

    def recv(self, timeout=None):
        try:
            return self.inbox.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError from None

    def close(self, code=1000, reason="") -> None:
        self.closed = code


def _ws_pair():
    a, b = queue.Queue(), queue.Queue()
    return _FakeWS(a, b), _FakeWS(b, a)


def _handshake(server_token: bytes, client_token: bytes):
    server_ws, client_ws = _ws_pair()
    out: dict = {}

    def serve():
        try:
            channel, hello = server_handshake(server_ws, server_token, 1 << 20, 1 << 16, timeout=5)
            from encrypted_torch.protocol.messages import Welcome

            channel.send(Welcome("ab" * 16, {"stage": "upload"}))
            out["server"] = (channel, hello)
        except EncTorchError as err:
            out["server_error"] = err
            Channel(server_ws).fail(err)

    t = threading.Thread(target=serve)
    t.start()
    try:
        out["client"] = client_handshake(client_ws, client_token, "", "", 1 << 20, timeout=5)
    except EncTorchError as err:
        out["client_error"] = err
    t.join()
    return out, server_ws, client_ws


def test_handshake_authenticates_both_sides_and_seals_the_channel():
    out, server_ws, client_ws = _handshake(TOKEN, TOKEN)
    (channel, welcome, hello), (server_channel, _) = out["client"], out["server"]
    assert welcome.session_id == "ab" * 16 and hello.chunk_bytes == 1 << 16
    channel.send(Progress(0, 1, {}))
    assert server_channel.recv(1) == Progress(0, 1, {})
    client_ws.send(b"forged")  # an injected frame fails the MAC check
    with pytest.raises(AuthenticationError):
        server_channel.recv(1)
    client_ws.send("text")
    with pytest.raises(ProtocolError, match="text frame"):
        server_channel.recv(1)


def test_handshake_with_the_wrong_token_fails_typed_on_both_sides():
    out, server_ws, _ = _handshake(TOKEN, b"a wrong token of enough length")
    assert isinstance(out["server_error"], AuthenticationError)
    assert isinstance(out["client_error"], AuthenticationError) and isinstance(out["client_error"], RemoteError)
    assert server_ws.closed == 1008


def test_remote_errors_keep_their_type():
    err = remote_error("KeyRoleError", "no secret keys here")
    assert isinstance(err, et.KeyRoleError) and isinstance(err, RemoteError) and err.kind == "KeyRoleError"
    assert type(remote_error("NotAnError", "x")) is RemoteError
    _, ws = _ws_pair()
    ws.inbox.put(ErrorMessage("ShapeError", "bad").encode())
    with pytest.raises(et.ShapeError, match="bad"):
        Channel(ws).recv(1)


# --- ciphertexts and tensors inside messages -----------------------------------------------------------------


def test_cipher_lists_round_trip(any_ctx):
    pub = any_ctx.public()
    ciphers = [pub.evaluator.encrypt(torch.linspace(-1, 1, pub.slots).numpy() * k) for k in range(3)]
    ciphers[1] = pub.evaluator.mod_switch(ciphers[1], 1)
    back = decode_ciphers(encode_ciphers(pub, ciphers), pub, expected=3)
    assert [(c.level, c.scale, c.size) for c in back] == [(c.level, c.scale, c.size) for c in ciphers]
    for a, b in zip(back, ciphers, strict=True):
        assert abs(any_ctx.decrypt_vector(a) - any_ctx.decrypt_vector(b)).max() < 1e-9
    with pytest.raises(ProtocolError, match="asked for"):
        decode_ciphers(encode_ciphers(pub, ciphers), pub, expected=2)
    t = {"w": et.encrypt(torch.ones(3, 5), any_ctx)}
    assert torch.equal(any_ctx.decrypt(decode_tensors(encode_tensors(t), pub, like=t)["w"]), any_ctx.decrypt(t["w"]))
    with pytest.raises(ProtocolError, match="in reply to"):
        decode_tensors(encode_tensors(t), pub, like={"v": t["w"]})


def test_ciphers_under_another_key_are_refused(plain_ctx):
    other = et.SecretContext.create("test", backend="plain").public()
    c = other.evaluator.encrypt(0.5)
    with pytest.raises(et.ContextMismatchError):
        decode_ciphers(encode_ciphers(other, [c]), plain_ctx.public())


@given(st.binary(max_size=200), _json, st.data())
def test_fuzz_cipher_list_decoder(any_ctx, blob, meta, data):
    pub = any_ctx.public()
    good_meta = {"context": pub.fingerprint, "ciphers": data.draw(st.sampled_from(
        [[[3, 2.0**40, 2]], [[1, 2.0**40, 3]], meta, [meta], [[9, 1.0, 2]], [[0, -1.0, 2]]]))}
    for raw in (blob, serialize.pack("cipher_list", {"meta": serialize.dumps_json(good_meta), "c0": blob})):
        try:
            decode_ciphers(raw, pub)
        except EncTorchError as err:
            assert isinstance(err, (et.SerializationError, et.ContextMismatchError))


def test_sealed_recorded_levels_must_match_seal(seal_ctx):
    pub = seal_ctx.public()
    raw = encode_ciphers(pub, [pub.evaluator.encrypt(0.25)])
    sections = serialize.unpack(raw, "cipher_list")
    meta = serialize.loads_json(sections["meta"])
    meta["ciphers"][0][0] = 1  # claims a lower level than the ciphertext has
    sections["meta"] = serialize.dumps_json(meta)
    with pytest.raises(ProtocolError, match=re.escape("recorded as (1,")):
        decode_ciphers(serialize.pack("cipher_list", sections), pub)
