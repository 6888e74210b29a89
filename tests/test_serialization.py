"""Bytes: round trips of both contexts and of EncTensors, and a fuzzed ``from_bytes`` for each.

Any malformed input must raise SerializationError (KeyRoleError for a secret context offered as
a public one, ContextMismatchError for bytes of another key); never another exception or a crash.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

import encrypted_torch as et
from encrypted_torch.ckks import serialize

TOP = et.PRESETS["test"].levels


@pytest.fixture(scope="module")
def small_seal() -> et.SecretContext:
    """Real keys with a single rotation key, so that loading the bytes takes ~0.1 s."""
    return et.SecretContext.create("test", rotations=[1], backend="seal")


@pytest.fixture(scope="module", params=["plain", "seal"])
def ctx(request, small_seal) -> et.SecretContext:
    return et.SecretContext.create("test", backend="plain") if request.param == "plain" else small_seal


def _tensors(ctx: et.SecretContext) -> dict[str, et.EncTensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 70, generator=g, dtype=torch.float64) * 2 - 1
    a = et.encrypt(x, ctx, unit=(8, 512))
    return {
        "fresh": a,
        "product": a * a,                                   # scale Δ²/q, one level down
        "last level": (a * 0.5).mod_switch_to(0),
        "vertical": et.encrypt(x[:3], ctx, tiling="vertical"),
        "horizontal": et.encrypt(x[:, :3], ctx, tiling="horizontal"),
        "several blocks": et.encrypt(torch.ones(20, 600), ctx, unit=(8, 512)),
    }


# --- round trips ----------------------------------------------------------------------------------
def test_public_context_round_trip(ctx):
    pub = ctx.public()
    data = pub.to_bytes()
    loaded = et.PublicContext.from_bytes(data)
    assert (loaded.fingerprint, loaded.params, loaded.rotation_steps, loaded.backend_name) == (
        pub.fingerprint, pub.params, pub.rotation_steps, pub.backend_name)
    assert loaded.to_bytes() == data
    x = np.linspace(-1, 1, pub.slots)
    c = loaded.evaluator.rotate(loaded.encrypt_vector(x), 1)  # the loaded keys work
    np.testing.assert_allclose(ctx.decrypt_vector(c).real, np.roll(x, -1), atol=1e-5)


def test_public_bytes_are_those_of_the_public_context(ctx):
    fresh = et.SecretContext.from_bytes(ctx.to_bytes())
    fresh._public = None  # as right after keygen: public_bytes() packs without loading the keys
    before = fresh.public_bytes()
    assert before == fresh.public().to_bytes() == ctx.public_bytes()


def test_secret_context_round_trip(ctx):
    x = et.encrypt(torch.eye(4, dtype=torch.float64), ctx)
    loaded = et.SecretContext.from_bytes(ctx.to_bytes())
    assert loaded.fingerprint == ctx.fingerprint and loaded.params == ctx.params
    assert loaded.public().rotation_steps == ctx.public().rotation_steps
    assert torch.equal(loaded.decrypt(x), ctx.decrypt(x))
    y = et.encrypt(torch.ones(2, 2), loaded)  # and the original decrypts what the copy encrypts
    assert (ctx.decrypt(y) - 1).abs().max() < 1e-6


@pytest.mark.parametrize("name", ["fresh", "product", "last level", "vertical", "horizontal",
                                  "several blocks"])
def test_enctensor_round_trip(ctx, name):
    t = _tensors(ctx)[name]
    data = t.to_bytes()
    for loader_ctx in (ctx, ctx.public(), et.PublicContext.from_bytes(ctx.public_bytes())):
        loaded = et.EncTensor.from_bytes(data, loader_ctx)
        assert loaded.layout == t.layout
        assert [(c.level, c.scale, c.size) for c in loaded.ciphers()] == [
            (c.level, c.scale, c.size) for c in t.ciphers()]
        assert torch.equal(ctx.decrypt(loaded), ctx.decrypt(t))
        assert loaded.to_bytes() == data
    assert (loaded + loaded).level == t.level  # loaded ciphers compute


def test_enctensor_of_another_key(ctx):
    other = et.SecretContext.create("test", backend="plain")
    with pytest.raises(et.ContextMismatchError):
        et.EncTensor.from_bytes(_tensors(ctx)["fresh"].to_bytes(), other)


def test_framing_round_trip_and_checks():
    sections = {"a": b"", "b": bytes(range(256)), "é": b"x" * 1000}
    data = serialize.pack("kind", sections)
    assert serialize.unpack(data, "kind") == sections
    with pytest.raises(et.SerializationError, match="expected a serialized other"):
        serialize.unpack(data, "other")
    with pytest.raises(et.SerializationError, match="missing"):
        serialize.require(sections, "a", "zzz")
    with pytest.raises(et.SerializationError, match="expected bytes"):
        serialize.unpack("not bytes", "kind")  # type: ignore[arg-type]


# --- fuzzing --------------------------------------------------------------------------------------
KINDS = {"public": "public_context", "secret": "secret_context", "tensor": "enc_tensor"}


def _target(ctx: et.SecretContext, which: str):
    """(valid bytes, loader, exceptions that are a right answer)."""
    if which == "public":
        return ctx.public_bytes(), et.PublicContext.from_bytes, (et.SerializationError, et.KeyRoleError)
    if which == "secret":
        return ctx.to_bytes(), et.SecretContext.from_bytes, (et.SerializationError, et.ContextMismatchError)
    data = _tensors(ctx)["product"].to_bytes()
    return data, lambda b: et.EncTensor.from_bytes(b, ctx), (et.SerializationError, et.ContextMismatchError)


_cache: dict[tuple[str, str], tuple] = {}


def target(ctx: et.SecretContext, which: str):
    key = (ctx.fingerprint, which)
    if key not in _cache:
        _cache[key] = _target(ctx, which)
    return _cache[key]


def load_or_refuse(ctx: et.SecretContext, which: str, data: object) -> None:
    _, loader, allowed = target(ctx, which)
    try:
        loader(data)
    except allowed:
        pass


targets = pytest.mark.parametrize("which", sorted(KINDS))


@targets
@given(data=st.binary(max_size=4096))
@example(data=b"")
@example(data=serialize.MAGIC)
@example(data=serialize.MAGIC + bytes([serialize.VERSION]) + bytes(32))
@example(data=bytes(100))
def test_fuzz_random_bytes(ctx, which, data):
    with pytest.raises(et.SerializationError):
        target(ctx, which)[1](data)
    with pytest.raises(et.SerializationError):
        target(ctx, which)[1](serialize.MAGIC + data)


@targets
@given(cut=st.floats(0, 1, exclude_max=True))
@example(cut=0.0)
@example(cut=0.999999)
def test_fuzz_truncated(ctx, which, cut):
    valid = target(ctx, which)[0]
    with pytest.raises(et.SerializationError):
        target(ctx, which)[1](valid[: int(cut * len(valid))])


@targets
@given(at=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7))
@example(at=0.0, bit=0)
@example(at=0.999999, bit=7)  # in the checksum itself
def test_fuzz_bit_flip(ctx, which, at, bit):
    valid = bytearray(target(ctx, which)[0])
    valid[int(at * len(valid))] ^= 1 << bit
    with pytest.raises(et.SerializationError):
        target(ctx, which)[1](bytes(valid))


def test_fuzz_wrong_types(ctx):
    for which in KINDS:
        for data in (None, "text", 3, [1, 2]):
            with pytest.raises(et.SerializationError):
                target(ctx, which)[1](data)


def _mutate(payload: bytes, how: str, data: st.DataObject) -> bytes | None:
    if how == "random":
        return data.draw(st.binary(max_size=512))
    if how == "empty":
        return b""
    if how == "truncate":
        return payload[: data.draw(st.integers(0, max(len(payload) - 1, 0)))]
    if how == "flip" and payload:
        out = bytearray(payload)
        out[data.draw(st.integers(0, len(out) - 1))] ^= 1 << data.draw(st.integers(0, 7))
        return bytes(out)
    if how == "swap":
        return None  # replaced by another section's payload below
    return payload


@targets
@given(data=st.data())
def test_fuzz_valid_frame_with_garbage_sections(ctx, which, data):
    """A correct frame and checksum around sections that are not what they claim to be."""
    valid = target(ctx, which)[0]
    sections = serialize.unpack(valid, KINDS[which])
    names = sorted(sections)
    name = data.draw(st.sampled_from(names), label="section")
    how = data.draw(st.sampled_from(["random", "empty", "truncate", "flip", "swap", "drop", "extra"]))
    if how == "drop":
        del sections[name]
    elif how == "extra":
        sections[data.draw(st.text(max_size=8))] = data.draw(st.binary(max_size=64))
    else:
        new = _mutate(sections[name], how, data)
        sections[name] = sections[data.draw(st.sampled_from(names))] if new is None else new
    load_or_refuse(ctx, which, serialize.pack(KINDS[which], sections))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


@targets
@given(data=st.data())
def test_fuzz_metadata(ctx, which, data):
    """Valid frame, valid key material, metadata with any JSON in one field (or none at all)."""
    valid = target(ctx, which)[0]
    sections = serialize.unpack(valid, KINDS[which])
    meta = json.loads(sections["meta"])
    mode = data.draw(st.sampled_from(["field", "nested", "whole", "not json"]))
    if mode == "field":
        meta[data.draw(st.sampled_from(sorted(meta)))] = data.draw(json_values)
    elif mode == "nested":
        key = data.draw(st.sampled_from(sorted(meta)))
        if isinstance(meta[key], dict) and meta[key]:
            meta[key][data.draw(st.sampled_from(sorted(meta[key])))] = data.draw(json_values)
        elif isinstance(meta[key], list) and meta[key]:
            meta[key][data.draw(st.integers(0, len(meta[key]) - 1))] = data.draw(json_values)
    else:
        meta = data.draw(json_values)
    raw = data.draw(st.binary(max_size=64)) if mode == "not json" else json.dumps(meta).encode()
    sections["meta"] = raw
    load_or_refuse(ctx, which, serialize.pack(KINDS[which], sections))


# --- pinned cases found by the fuzzers ------------------------------------------------------------
def _with_meta(ctx: et.SecretContext, which: str, **changes: object) -> bytes:
    sections = serialize.unpack(target(ctx, which)[0], KINDS[which])
    meta = json.loads(sections["meta"])
    for key, value in changes.items():
        if "." in key:
            outer, inner = key.split(".")
            meta[outer][inner] = value
        else:
            meta[key] = value
    sections["meta"] = json.dumps(meta).encode()
    return serialize.pack(KINDS[which], sections)


@pytest.mark.parametrize("which", ["public", "secret"])
@pytest.mark.parametrize("changes", [
    {"steps": ["a"]}, {"steps": [math.nan]}, {"steps": {"x": 1}}, {"steps": None}, {"steps": [math.inf]},
    {"params.bits": [1000]}, {"params.bits": [40]}, {"params.bits": [60, 60, 60, 60, 60]},
    {"params.n": 12345}, {"params.name": "custom", "params.bits": [1000, 1000]},
    {"params.name": "custom", "params.scale_bits": 0}, {"params": [1, 2]}, {"backend": "tfhe"},
    {"fingerprint": "0" * 64},
])
def test_malformed_context_metadata(ctx, which, changes):
    if which == "secret" and "fingerprint" in changes:
        pytest.skip("a secret context derives its fingerprint")
    with pytest.raises(et.SerializationError):
        target(ctx, which)[1](_with_meta(ctx, which, **changes))


@pytest.mark.parametrize("changes", [
    {"shape": [2.5, 4]}, {"shape": [5, 70, 1]}, {"shape": [-5, 70]}, {"unit": [8.0, 512]},
    {"unit": [16, 512]}, {"tiling": 5}, {"blocks": [[TOP - 1, math.inf, 2]]}, {"blocks": [[TOP - 1, 0.0, 2]]},
    {"blocks": [[TOP + 1, 2.0**40, 2]]}, {"blocks": []}, {"blocks": [[1, 2]]}, {"blocks": [["a", 1, 2]]},
])
def test_malformed_tensor_metadata(ctx, changes):
    with pytest.raises(et.SerializationError):
        target(ctx, "tensor")[1](_with_meta(ctx, "tensor", **changes))


@pytest.mark.parametrize("block", [[TOP, None, 2], [TOP - 1, 2.0**40, 2], [TOP - 1, None, 3]])
def test_tensor_metadata_must_match_the_seal_ciphertext(small_seal, block):
    """SEAL knows each ciphertext's level, scale and size: bytes that disagree are refused."""
    real = _tensors(small_seal)["product"].ciphers()[0]
    block = [real.scale if v is None else v for v in block]
    with pytest.raises(et.SerializationError, match="recorded"):
        target(small_seal, "tensor")[1](_with_meta(small_seal, "tensor", blocks=[block]))


def test_plain_slot_vectors_must_be_finite():
    ctx = et.SecretContext.create("test", backend="plain")
    t = et.encrypt(torch.ones(2, 2), ctx)
    sections = serialize.unpack(t.to_bytes(), KINDS["tensor"])
    bad = np.full(ctx.slots, np.nan, dtype=np.complex128)
    sections["b0"] = ctx.public().backend.handle_to_bytes(bad)
    with pytest.raises(et.SerializationError, match="NaN"):
        et.EncTensor.from_bytes(serialize.pack(KINDS["tensor"], sections), ctx)


def test_spliced_secret_key_is_refused(small_seal, seal_ctx):
    """The secret key of one context with the public keys of another: ContextMismatchError."""
    sections = serialize.unpack(small_seal.to_bytes(), KINDS["secret"])
    sections["secret_key"] = serialize.unpack(seal_ctx.to_bytes(), KINDS["secret"])["secret_key"]
    with pytest.raises(et.ContextMismatchError):
        et.SecretContext.from_bytes(serialize.pack(KINDS["secret"], sections))
