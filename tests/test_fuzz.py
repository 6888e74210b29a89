"""Structure-aware fuzzing of every decoder that takes bytes from strangers (issue #12, "Trust").

Each decoder gets valid encodings mutated the ways an attacker or a damaged disk would: truncated,
bit-flipped, sections dropped, renamed, duplicated or spliced in from another object, metadata
fields replaced by hostile JSON (deep nesting, 400-digit integers, NaN, wrong types, long strings,
lone surrogates, duplicate keys), framing that declares huge counts and lengths. The checksum is
recomputed, so the mutants get past it to the parsers behind. The contract is one line: a decoder
returns a valid object or raises an EncTorchError subclass; any other exception fails the test.

The default run draws ``_DEFAULT_EXAMPLES`` inputs per decoder; ``ENCRYPTED_TORCH_HYPOTHESIS=fuzz``
draws 10,000 (tests/conftest.py), and ``ENCRYPTED_TORCH_FUZZ_REPORT=path`` writes the counts of
inputs and untyped errors per decoder as JSON (docs/protocol.md, "Fuzzing").
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import encrypted_torch as et
from encrypted_torch.ckks import serialize
from encrypted_torch.client import KeyOwner
from encrypted_torch.client.remote import RemoteSession
from encrypted_torch.errors import EncTorchError
from encrypted_torch.protocol import ciphers
from encrypted_torch.protocol.messages import Message, decode, message_types
from encrypted_torch.server import session as server_session
from encrypted_torch.storage import dataset as storage_dataset
from encrypted_torch.storage.checkpoint import encode_checkpoint, load_checkpoint
from encrypted_torch.storage.dataset import BatchEntry, FileEntry, Manifest, params_record, read_manifest
from encrypted_torch.storage.jsonio import loads_strict
from encrypted_torch.tensor.enctensor import EncTensor
from encrypted_torch.tensor.layout import BlockLayout
from encrypted_torch.training import EarlyStopping

_FUZZ = os.environ.get("ENCRYPTED_TORCH_HYPOTHESIS") == "fuzz"
_DEFAULT_EXAMPLES = 40
TOKEN = "fuzz-token-0123456789abcdef"
INPUTS: Counter[str] = Counter()
UNTYPED: Counter[str] = Counter()
UNTYPED_KINDS: dict[str, Counter[str]] = {}


def fuzz_settings(default: int = _DEFAULT_EXAMPLES, share: int = 1) -> settings:
    """A modest, fixed number of examples in CI; under ENCRYPTED_TORCH_HYPOTHESIS=fuzz the profile's
    10,000 per decoder, split over the ``share`` parametrizations of a test (backends, message types)."""
    return settings(max_examples=-(-settings().max_examples // share) if _FUZZ else default)


def check(decoder: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a decoder on hostile input: its result, or None if it refused with an EncTorchError."""
    INPUTS[decoder] += 1
    try:
        return fn(*args, **kwargs)
    except EncTorchError as err:
        assert str(err), f"{decoder}: an error without a message"
        return None
    except Exception as err:  # noqa: BLE001 - anything untyped is the finding
        UNTYPED[decoder] += 1
        UNTYPED_KINDS.setdefault(decoder, Counter())[type(err).__name__] += 1
        raise AssertionError(f"{decoder} raised untyped {type(err).__name__}: {str(err)[:300]}") from err


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    path = os.environ.get("ENCRYPTED_TORCH_FUZZ_REPORT")
    if path:
        report = {d: {"inputs": INPUTS[d], "untyped": UNTYPED[d], "kinds": dict(UNTYPED_KINDS.get(d, {}))}
                  for d in sorted(INPUTS)}
        Path(path).write_text(json.dumps(report, indent=1))


# --- hostile JSON values --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Raw:
    """JSON text spliced in verbatim (what json.dumps cannot write: 10,000-deep nesting, duplicate keys)."""

    text: str


def deep(n: int) -> Raw:
    return Raw("[" * n + "]" * n)


_HOSTILE_RAW = [deep(33), deep(1000), deep(10_000), Raw('{"a": ' * 40 + "1" + "}" * 40), Raw("1" + "0" * 400),
                Raw("-" + "9" * 5000), Raw("1e999"), Raw("-1e999"), Raw("NaN"), Raw("Infinity"), Raw('"\\ud800"'),
                Raw('{"a": 1, "a": 2}'), Raw("18446744073709551616"), Raw("1.5e308")]
_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=20),
                  st.sampled_from([2**63, -(2**63) - 1, 10**400, 0, -1, 1 << 53, "", "x" * 100_000]))
hostile_values = st.one_of(
    _leaf,
    st.sampled_from(_HOSTILE_RAW),
    st.integers(20, 5000).map(lambda n: Raw("7" * n)),
    st.integers(2, 12_000).map(deep),
    st.recursive(_leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                       max_size=4), max_leaves=8),
)


def to_json(obj: Any) -> bytes:
    """JSON bytes of ``obj``, with Raw values spliced in as text."""
    raws: list[Raw] = []

    def swap(o: Any) -> Any:
        if isinstance(o, Raw):
            raws.append(o)
            return f"\x00RAW{len(raws) - 1}\x00"
        if isinstance(o, dict):
            return {k: swap(v) for k, v in o.items()}
        if isinstance(o, list):
            return [swap(v) for v in o]
        return o

    text = json.dumps(swap(obj))
    text = re.sub(r'"\\u0000RAW(\d+)\\u0000"', lambda m: raws[int(m.group(1))].text, text)
    return text.encode("utf-8", errors="surrogatepass")


def to_object(obj: Any) -> Any:
    """A Python object for decoders that take parsed JSON (Manifest.from_json): Raw parsed leniently."""
    if isinstance(obj, Raw):
        if obj.text.startswith("[") and obj.text.strip("[]") == "":
            out: list = []
            for _ in range(len(obj.text) // 2 - 1):  # iteratively: the point is that no one recurses
                out = [out]
            return out
        try:
            return json.loads(obj.text)
        except (ValueError, RecursionError):
            return obj.text
    if isinstance(obj, dict):
        return {k: to_object(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_object(v) for v in obj]
    return obj


# --- mutations --------------------------------------------------------------------------------------------
# A mutation is data (so @example can pin one); ``apply`` turns a valid encoding into the mutant.
#   ("bytes", [(op, position, value), ...])      raw bytes: truncate, flip, insert, delete (checksum breaks)
#   ("meta", [path indices], value)               one metadata field (picked by indices) replaced by ``value``
#   ("meta_drop", [path indices]) / ("meta_add", key, value)
#   ("meta_whole", value)                         the whole metadata replaced
#   ("section", op, index, donor, payload_ops)    drop / rename / duplicate / splice / mutate one section
#   ("frame", count, length)                      framing that declares ``count`` sections, ``length`` bytes
_byte_ops = st.lists(st.tuples(st.sampled_from(["truncate", "flip", "insert", "delete"]), st.integers(0, 2**32),
                               st.integers(1, 255)), min_size=1, max_size=4)
_path = st.lists(st.integers(0, 1000), min_size=1, max_size=4)
mutations = st.one_of(
    st.tuples(st.just("bytes"), _byte_ops),
    st.tuples(st.just("meta"), _path, hostile_values),
    st.tuples(st.just("meta_drop"), _path),
    st.tuples(st.just("meta_add"), st.text(max_size=10), hostile_values),
    st.tuples(st.just("meta_whole"), hostile_values),
    st.tuples(st.just("section"), st.sampled_from(["drop", "rename", "duplicate", "splice", "mutate", "empty"]),
              st.integers(0, 1000), st.integers(0, 1000), _byte_ops),
    st.tuples(st.just("frame"), st.sampled_from([0, 1, 2**16, 2**16 + 1, 2**32 - 1]),
              st.sampled_from([0, 1, 2**31, 2**63, 2**64 - 1])),
)
DONORS: list[bytes] = []  # sections of the valid encodings made here (one of each kind), to splice into others
_DONATED: set[str] = set()
_GOOD: dict[tuple, Any] = {}


def mutate_bytes(data: bytes, ops: list[tuple[str, int, int]]) -> bytes:
    out = bytearray(data)
    for op, pos, value in ops:
        i = pos % (len(out) + 1)
        if op == "truncate":
            del out[i:]
        elif op == "flip" and i < len(out):
            out[i] ^= value
        elif op == "insert":
            out[i:i] = bytes([value]) * (value % 7 + 1)
        elif op == "delete":
            del out[i : i + value % 9 + 1]
    return bytes(out)


def _walk(obj: Any, path: list[int]) -> tuple[Any, Any]:
    """The container and key that ``path`` (indices taken modulo the sizes) picks inside ``obj``."""
    parent, key = None, None
    for i in path:
        if isinstance(obj, dict) and obj:
            parent, key = obj, sorted(obj)[i % len(obj)]
        elif isinstance(obj, list) and obj:
            parent, key = obj, i % len(obj)
        else:
            break
        obj = parent[key]
    return parent, key


def mutate_meta(meta: Any, mutation: tuple) -> Any:
    meta = json.loads(json.dumps(meta))  # a copy
    kind = mutation[0]
    if kind == "meta_whole":
        return mutation[1]
    if kind == "meta_add":
        if isinstance(meta, dict):
            meta[mutation[1]] = mutation[2]
        return meta
    parent, key = _walk(meta, mutation[1])
    if parent is None:
        return mutation[2] if kind == "meta" else meta
    if kind == "meta":
        parent[key] = mutation[2]
    else:
        del parent[key]
    return meta


def raw_pack(kind: str, sections: list[tuple[str, bytes]], count: int | None = None,
             length: int | None = None) -> bytes:
    """``serialize.pack`` with a valid checksum but any declared count and lengths (and repeated names)."""
    out = bytearray(serialize.MAGIC) + struct.pack("<B", serialize.VERSION)
    out += struct.pack("<H", len(kind.encode())) + kind.encode()
    out += struct.pack("<I", len(sections) if count is None else count)
    for i, (name, payload) in enumerate(sections):
        raw = name.encode("utf-8", errors="surrogatepass")
        out += struct.pack("<H", len(raw)) + raw
        out += struct.pack("<Q", len(payload) if (length is None or i != len(sections) - 1) else length)
        out += payload
    out += hashlib.sha256(out).digest()
    return bytes(out)


def apply(data: bytes, kind: str, mutation: tuple, meta_section: str = "meta") -> bytes:
    """The mutant of ``data`` (a valid ``serialize.pack`` of ``kind``) that ``mutation`` describes."""
    if mutation[0] == "bytes":
        return mutate_bytes(data, mutation[1])
    sections = list(serialize.unpack(data, kind).items())
    if mutation[0].startswith("meta"):
        idx = [n for n, _ in sections].index(meta_section)
        meta = serialize.loads_json(sections[idx][1])
        sections[idx] = (meta_section, to_json(mutate_meta(meta, mutation)))
        return raw_pack(kind, sections)
    if mutation[0] == "frame":
        return raw_pack(kind, sections, count=mutation[1], length=mutation[2])
    _, op, index, donor, ops = mutation
    i = index % len(sections)
    name, payload = sections[i]
    if op == "drop":
        del sections[i]
    elif op == "rename":
        sections[i] = (name + "x" if index % 2 else f"b{index}", payload)
    elif op == "duplicate":
        sections.append((name, payload))
    elif op == "splice" and DONORS:
        sections[i] = (name, DONORS[donor % len(DONORS)])
    elif op == "mutate":
        sections[i] = (name, mutate_bytes(payload, ops))
    elif op == "empty":
        sections[i] = (name, b"")
    return raw_pack(kind, sections)


def donate(data: bytes, kind: str, owner: str) -> bytes:
    if kind + owner not in _DONATED:  # once: the pool must not grow with the examples
        _DONATED.add(kind + owner)
        DONORS.extend(p for n, p in serialize.unpack(data, kind).items() if n != "meta")
    return data


def good(key: tuple, make: Callable[[], Any]) -> Any:
    """A valid encoding made once per key (SEAL encryption is slow and the mutants never change it)."""
    if key not in _GOOD:
        _GOOD[key] = make()
    return _GOOD[key]


# --- valid objects to start from ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_seal() -> et.SecretContext:
    """SEAL keys with one rotation step: loading them is fast enough for 10,000 mutants."""
    return et.SecretContext.create("test", rotations=[1], backend="seal")


@pytest.fixture(scope="module", params=["plain", "seal"])
def fuzz_ctx(request: pytest.FixtureRequest, plain_ctx: et.SecretContext, small_seal: et.SecretContext):
    return plain_ctx if request.param == "plain" else small_seal


def _tensor(ctx: Any, cols: int = 70) -> EncTensor:
    return et.encrypt(torch.linspace(-1, 1, 3 * cols).reshape(3, cols), ctx, unit=(64, 64))


_BY_NAME = {"version": 1, "server_nonce": b"s" * 32, "client_nonce": b"c" * 32, "mac": b"m" * 32,
            "max_message_bytes": 1 << 20, "chunk_bytes": 1 << 16, "session_id": "ab" * 16, "fingerprint": "cd" * 32,
            "sha256": "ef" * 32, "target": "dataset/train/batch-000000-x.et", "size": 100, "offset": 0,
            "data": b"chunk", "request_id": 7, "epoch": 1, "status": {"stage": "upload"}, "stage": "softmax"}
_BY_KIND = {"int": 3, "str": "name", "bool": True, "float": 1.5, "bytes": b"payload", "dict": {"a": 1, "b": [1, 2.5]},
            "list[bytes]": [b"one", b"two"], "dict[str, bytes]": {"w": b"weights", "b": b"bias"}}


def valid_message(cls: type[Message]) -> Message:
    return cls(**{f.name: _BY_NAME.get(f.name, _BY_KIND.get(f.type)) for f in fields(cls)})


ALL_TYPES = sorted(message_types())


def test_the_starting_points_are_valid(fuzz_ctx):
    """The fuzzers mutate valid encodings; each must decode unmutated (else the fuzz tests prove nothing)."""
    for name in ALL_TYPES:
        msg = valid_message(message_types()[name])
        assert decode(msg.encode()) == msg
    t = _tensor(fuzz_ctx)
    assert EncTensor.from_bytes(t.to_bytes(), fuzz_ctx).layout == t.layout
    assert et.PublicContext.from_bytes(fuzz_ctx.public_bytes()).fingerprint == fuzz_ctx.fingerprint
    assert et.SecretContext.from_bytes(fuzz_ctx.to_bytes()).fingerprint == fuzz_ctx.fingerprint


# --- the decoders ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL_TYPES)
@fuzz_settings(max(4, _DEFAULT_EXAMPLES // 4), share=len(ALL_TYPES))
@given(mutation=mutations)
@example(mutation=("meta_whole", deep(10_000)))
@example(mutation=("meta_add", "x", Raw("1" + "0" * 400)))
@example(mutation=("meta", [0], Raw("1" + "0" * 400)))
@example(mutation=("meta", [0], Raw("1e999")))
@example(mutation=("frame", 2**32 - 1, 2**64 - 1))
def test_fuzz_message_decode(name, mutation):
    valid = valid_message(message_types()[name]).encode()
    msg = check("protocol.messages.decode", decode, apply(valid, "message", mutation))
    assert msg is None or isinstance(msg, Message)


def test_a_huge_integer_in_a_float_field_is_a_protocol_error():
    """The pre-auth finding: 10**400 where a float belongs raised OverflowError."""
    from encrypted_torch.protocol.messages import Progress

    data = raw_pack("message", [("type", b"progress"), ("meta", to_json({"epoch": 1, "step": 2, "info": {}}))])
    assert isinstance(decode(data), Progress)
    float_type = next((c for c in message_types().values() if any(f.type == "float" for f in fields(c))), None)
    if float_type is not None:
        meta = {f.name: (Raw("1" + "0" * 400) if f.type == "float" else _BY_NAME.get(f.name, _BY_KIND[f.type]))
                for f in fields(float_type) if f.type not in ("bytes",)}
        secs = [("type", float_type.TYPE.encode()), ("meta", to_json(meta))]
        secs += [(f.name, b"x" * 32) for f in fields(float_type) if f.type == "bytes"]
        with pytest.raises(et.SerializationError):
            decode(raw_pack("message", secs))


@fuzz_settings(share=2)
@given(mutation=mutations)
@example(mutation=("meta", [0], deep(10_000)))
@example(mutation=("meta", [1, 0, 1], Raw("1" + "0" * 400)))
@example(mutation=("section", "splice", 1, 0, [("flip", 0, 1)]))
def test_fuzz_cipher_list(fuzz_ctx, mutation):
    pub = fuzz_ctx.public()
    data = good(("ciphers", pub.fingerprint), lambda: ciphers.encode_ciphers(pub, _tensor(pub, 64).ciphers()))
    donate(data, ciphers.KIND, pub.fingerprint)
    got = check("protocol.ciphers.decode_ciphers", ciphers.decode_ciphers, apply(data, ciphers.KIND, mutation), pub)
    assert got is None or all(c.context_id == pub.fingerprint for c in got)


@fuzz_settings(share=2)
@given(mutation=mutations, which=st.integers(0, 3), as_list=st.booleans())
@example(mutation=("meta", [0], deep(10_000)), which=0, as_list=False)
def test_fuzz_tensor_dicts(fuzz_ctx, mutation, which, as_list):
    pub = fuzz_ctx.public()
    raw = dict(good(("tensors", pub.fingerprint),
                    lambda: {"w": _tensor(pub).to_bytes(), "b": _tensor(pub, 10).to_bytes()}))
    key = sorted(raw)[which % 2]
    raw[key] = apply(raw[key], "enc_tensor", mutation)
    if as_list:
        check("protocol.ciphers.decode_tensor_list", ciphers.decode_tensor_list, list(raw.values()), pub)
    else:
        like = None if which < 2 else good(("like", pub.fingerprint),
                                           lambda: {"w": _tensor(pub), "b": _tensor(pub, 10)})
        check("protocol.ciphers.decode_tensors", ciphers.decode_tensors, raw, pub, like)


@fuzz_settings()
@given(data=st.one_of(st.binary(max_size=300), mutations.map(lambda m: ("mutation", m))))
@example(data=serialize.MAGIC + b"\x01")
@example(data=("mutation", ("frame", 2**32 - 1, 2**64 - 1)))
def test_fuzz_unpack(data):
    if isinstance(data, tuple):
        valid = serialize.pack("thing", {"meta": b"{}", "a": b"x" * 40, "b": b""})
        data = apply(valid, "thing", data[1])
    got = check("ckks.serialize.unpack", serialize.unpack, data, "thing")
    assert got is None or all(isinstance(k, str) and isinstance(v, bytes) for k, v in got.items())


@fuzz_settings(2 * _DEFAULT_EXAMPLES)
@given(value=hostile_values, text=st.one_of(st.none(), st.binary(max_size=200), st.text(max_size=200)))
@example(value=deep(10_000), text=None)
@example(value=Raw("1" + "0" * 400), text=None)
@example(value=None, text=b"\xff\xfe")
def test_fuzz_loads_json(value, text):
    raw = to_json(value) if text is None else text
    check("ckks.serialize.loads_json", serialize.loads_json, raw)
    check("storage.jsonio.loads_strict", loads_strict, raw, "fuzz")


@fuzz_settings(share=2)
@given(mutation=mutations)
@example(mutation=("meta", [0], deep(10_000)))
@example(mutation=("meta_whole", deep(10_000)))
@example(mutation=("meta", [0, 0, 1], Raw("1" + "0" * 400)))
@example(mutation=("meta", [3, 0], Raw("1e999")))
def test_fuzz_enctensor_from_bytes(fuzz_ctx, mutation):
    pub = fuzz_ctx.public()
    data = donate(good(("tensor", pub.fingerprint), lambda: _tensor(pub).to_bytes()), "enc_tensor", pub.fingerprint)
    t = check("EncTensor.from_bytes", EncTensor.from_bytes, apply(data, "enc_tensor", mutation), pub)
    assert t is None or (isinstance(t, EncTensor) and t.layout.slots == pub.slots)


@fuzz_settings(share=2)
@given(mutation=mutations)
@example(mutation=("meta_whole", deep(10_000)))
@example(mutation=("meta", [2, 1, 0], Raw("1" + "0" * 400)))
@example(mutation=("meta", [3], [10**400]))
def test_fuzz_public_context(fuzz_ctx, mutation):
    data = donate(fuzz_ctx.public_bytes(), "public_context", fuzz_ctx.fingerprint)
    ctx = check("PublicContext.from_bytes", et.PublicContext.from_bytes, apply(data, "public_context", mutation))
    assert ctx is None or isinstance(ctx, et.PublicContext)


@fuzz_settings(share=2)
@given(mutation=mutations)
@example(mutation=("meta_whole", deep(10_000)))
@example(mutation=("meta", [1, 0, 0], Raw("1" + "0" * 400)))
def test_fuzz_secret_context(fuzz_ctx, mutation):
    data = good(("secret", fuzz_ctx.fingerprint), fuzz_ctx.to_bytes)
    ctx = check("SecretContext.from_bytes", et.SecretContext.from_bytes, apply(data, "secret_context", mutation))
    assert ctx is None or isinstance(ctx, et.SecretContext)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@fuzz_settings()
@given(mutation=mutations)
@example(mutation=("meta", [4, 0], deep(10_000)))
@example(mutation=("meta", [4, 0], deep(30)))
@example(mutation=("meta", [4], Raw("1" + "0" * 400)))
@example(mutation=("meta", [4, 1], {"$tensor": "meta"}))
def test_fuzz_load_checkpoint(plain_ctx, fuzz_dir, mutation):
    pub = plain_ctx.public()
    state = {"epoch": 1, "step": 2, "model": {"w": _tensor(pub)}, "optimizer": {"state": [{"m": _tensor(pub, 10)}]},
             "result": {"steps": [{"seconds": 1.5}], "epochs": []}, "loader_rng": [3, [1, 2, 3], None]}
    path = fuzz_dir / "checkpoint.et"
    path.write_bytes(apply(good(("checkpoint",), lambda: encode_checkpoint(state, pub.fingerprint)), "checkpoint",
                           mutation))
    got = check("storage.checkpoint.load_checkpoint", load_checkpoint, path, pub)
    assert got is None or isinstance(got, dict)


def _manifest(ctx: Any) -> dict[str, Any]:
    def entry(i: int, part: str) -> FileEntry:
        return FileEntry(storage_dataset.batch_file(i, part), 1000 + i, f"{i:02x}" * 32)

    batches = tuple(BatchEntry(4, entry(i, "x"), entry(i, "y")) for i in range(2))
    m = Manifest("train", 3, 5, (64, 64), params_record(ctx.params, ctx.backend_name), ctx.fingerprint, batches)
    return m.to_json()


@fuzz_settings()
@given(mutation=mutations.filter(lambda m: m[0].startswith("meta")), as_file=st.booleans())
@example(mutation=("meta", [1, 0, 0], deep(10_000)), as_file=True)
@example(mutation=("meta", [1, 0, 0], deep(10_000)), as_file=False)
@example(mutation=("meta", [9], 10**400), as_file=False)
@example(mutation=("meta", [9], Raw("1" + "0" * 400)), as_file=True)
@example(mutation=("meta", [42], deep(1991)), as_file=False)  # found by the fuzz profile: repr() in a message
@example(mutation=("meta", [116], deep(1991)), as_file=False)
def test_fuzz_manifest(plain_ctx, fuzz_dir, mutation, as_file):
    hostile = mutate_meta(_manifest(plain_ctx), mutation)
    if as_file:
        (fuzz_dir / storage_dataset.MANIFEST).write_bytes(to_json(hostile))
        got = check("storage.dataset.read_manifest", read_manifest, fuzz_dir)
    else:
        got = check("storage.dataset.Manifest.from_json", Manifest.from_json, to_object(hostile))
    assert got is None or isinstance(got, Manifest)


_SESSION_ID = "0123456789abcdef" * 2


@fuzz_settings()
@given(mutation=mutations.filter(lambda m: m[0].startswith("meta") or m[0] == "bytes"))
@example(mutation=("meta_whole", deep(10_000)))
@example(mutation=("meta", [0], Raw("1" + "0" * 400)))
@example(mutation=("bytes", [("flip", 0, 0x80)]))
def test_fuzz_session_load(fuzz_dir, mutation):
    directory = fuzz_dir / "sessions" / _SESSION_ID
    directory.mkdir(parents=True, exist_ok=True)
    record = {"id": _SESSION_ID, "created": 1.5, "stage": "training", "fingerprint": "ab" * 32,
              "checkpoint": {"epoch": 1, "step": 2, "steps_done": 5}, "summary": None}
    raw = to_json(record)
    raw = mutate_bytes(raw, mutation[1]) if mutation[0] == "bytes" else to_json(mutate_meta(record, mutation))
    (directory / "session.json").write_bytes(raw)
    got = check("server.session.Session.load", server_session.Session.load, directory, server_session.Limits(), {})
    assert got is None or got.id == _SESSION_ID


def _client_state(plain_ctx: et.SecretContext, path: Path) -> bytes:
    owner = KeyOwner(plain_ctx, EarlyStopping(patience=3))
    owner.history = [{"epoch": 0, "loss": 1.25, "improved": 1.0}, {"epoch": 1, "loss": float("nan"), "improved": 0.0}]
    owner._best = {"w": torch.linspace(-1, 1, 12).reshape(3, 4)}
    owner._val_labels = {"val": torch.arange(5)}
    owner._layouts = {"w": (BlockLayout((3, 4), (64, 64)), plain_ctx.public())}
    path.unlink(missing_ok=True)  # else the constructor loads the previous mutant
    session = RemoteSession("ws://127.0.0.1:9", TOKEN, owner, state_path=path)
    session.session_id = _SESSION_ID
    session._save_state()
    return path.read_bytes()


@fuzz_settings()
@given(mutation=mutations)
@example(mutation=("meta", [1, 0], deep(10_000)))
@example(mutation=("meta", [0, 2], []))
@example(mutation=("meta", [0, 3, 0], Raw("1" + "0" * 400)))
@example(mutation=("section", "mutate", 0, 0, [("flip", 9, 0x40)]))
@example(mutation=("section", "mutate", 1, 0, [("flip", 12807, 123)]))  # found: tokenize.TokenError in np.load
@example(mutation=("section", "mutate", 1, 0, [("flip", 40, ord("("))]))
def test_fuzz_client_state(plain_ctx, fuzz_dir, mutation):
    path = fuzz_dir / "client_state.et"
    valid = _client_state(plain_ctx, path)
    path.write_bytes(apply(valid, "client_state", mutation))
    owner = KeyOwner(plain_ctx, EarlyStopping(patience=3))
    got = check("client.remote.RemoteSession._load_state", RemoteSession, "ws://127.0.0.1:9", TOKEN, owner,
                state_path=path)
    assert got is None or got.session_id is None or len(got.session_id) == 32


def test_the_client_state_round_trips(plain_ctx, fuzz_dir):
    path = fuzz_dir / "client_state_ok.et"
    _client_state(plain_ctx, path)
    owner = KeyOwner(plain_ctx, EarlyStopping(patience=3))
    session = RemoteSession("ws://127.0.0.1:9", TOKEN, owner, state_path=path)
    assert session.session_id == _SESSION_ID and owner.history[0] == {"epoch": 0, "loss": 1.25, "improved": 1.0}
    assert owner.history[1]["loss"] != owner.history[1]["loss"]  # NaN survives as "nan"
    assert owner.early_stopping.best == float("inf") and torch.equal(owner._val_labels["val"], torch.arange(5))
