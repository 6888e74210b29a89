"""Every message of the client-server protocol, as a small dataclass, and their one codec.

A message is ``serialize.pack("message", {"type": ..., "meta": JSON, <binary sections>})``:
scalar and JSON-object fields go into ``meta``, ``bytes`` fields into their own section, and
``list[bytes]`` / ``dict[str, bytes]`` fields into one section per item. The decoder accepts
exactly the fields the type declares, with the declared types and bounds, and nothing else, so
every malformed input is a ProtocolError (or SerializationError) before anything acts on it.
Never pickle. docs/protocol.md describes the exchange these messages make up.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from ..ckks import serialize
from ..storage.jsonio import loads_strict
from .errors import MessageTooLargeError, ProtocolError

KIND = "message"
PROTOCOL_VERSION = 1
MAX_TEXT = 4096
MAX_ITEMS = 1 << 16
NONCE_BYTES = 32
_KINDS = {"int", "str", "bool", "float", "bytes", "dict", "list[bytes]", "dict[str, bytes]"}
_SESSION_ID = re.compile(r"[0-9a-f]{32}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9_.\-/]{1,200}")
_REGISTRY: dict[str, type[Message]] = {}


@dataclass(frozen=True)
class Message:
    """Base class; subclasses set ``TYPE`` and declare fields with one of the codec's field types."""

    TYPE: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.TYPE in _REGISTRY:
            raise TypeError(f"message type {cls.TYPE!r} declared twice")
        _REGISTRY[cls.TYPE] = cls

    def validate(self) -> None:
        """Bounds beyond the field types (nonce lengths, identifier formats); ProtocolError if broken."""

    def encode(self) -> bytes:
        meta: dict[str, Any] = {}
        sections = {"type": self.TYPE.encode()}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "bytes":
                sections[f.name] = bytes(value)
            elif f.type == "list[bytes]":
                meta[f.name] = len(value)
                for i, item in enumerate(value):
                    sections[f"{f.name}.{i}"] = bytes(item)
            elif f.type == "dict[str, bytes]":
                meta[f.name] = list(value)
                for i, item in enumerate(value.values()):
                    sections[f"{f.name}.{i}"] = bytes(item)
            else:
                meta[f.name] = value
        sections["meta"] = serialize.dumps_json(meta)
        return serialize.pack(KIND, sections)


def message_types() -> dict[str, type[Message]]:
    """Every message type by wire name (for docs and tests)."""
    return dict(_REGISTRY)


def decode(data: bytes, max_bytes: int | None = None) -> Message:
    """Parse and validate one message; MessageTooLargeError, ProtocolError or SerializationError if bad."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"a message is bytes, got {type(data).__name__}")
    if max_bytes is not None and len(data) > max_bytes:
        raise MessageTooLargeError(f"message of {len(data)} bytes is over the {max_bytes}-byte limit")
    sections = serialize.unpack(data, KIND)
    type_raw, meta_raw = serialize.require(sections, "type", "meta")
    cls = _REGISTRY.get(type_raw.decode("ascii", errors="replace"))
    if cls is None or not cls.TYPE:
        raise ProtocolError(f"unknown message type {type_raw[:40]!r}")
    meta = loads_strict(meta_raw, f"{cls.TYPE} metadata")
    if not isinstance(meta, dict):
        raise ProtocolError(f"{cls.TYPE}: metadata is not a JSON object")
    declared = fields(cls)
    if set(meta) != {f.name for f in declared if f.type != "bytes"}:
        raise ProtocolError(f"{cls.TYPE}: fields {sorted(meta)} do not match the declared ones")
    used = {"type", "meta"}
    values: dict[str, Any] = {}
    for f in declared:
        where = f"{cls.TYPE}.{f.name}"
        if f.type == "bytes":
            values[f.name] = _section(sections, f.name, where)
            used.add(f.name)
        elif f.type in ("list[bytes]", "dict[str, bytes]"):
            keys = _item_keys(meta[f.name], f.type, where)
            items = [_section(sections, f"{f.name}.{i}", where) for i in range(len(keys))]
            used.update(f"{f.name}.{i}" for i in range(len(keys)))
            values[f.name] = items if f.type == "list[bytes]" else dict(zip(keys, items, strict=True))
        else:
            values[f.name] = _scalar(meta[f.name], f.type, where)
    if set(sections) != used:
        raise ProtocolError(f"{cls.TYPE}: unexpected sections {sorted(set(sections) - used)[:5]}")
    msg = cls(**values)
    msg.validate()
    return msg


def _section(sections: dict[str, bytes], name: str, where: str) -> bytes:
    if name not in sections:
        raise ProtocolError(f"{where}: missing section {name!r}")
    return sections[name]


def _item_keys(v: Any, kind: str, where: str) -> list:
    if kind == "list[bytes]":
        if type(v) is not int or not 0 <= v <= MAX_ITEMS:
            raise ProtocolError(f"{where}: item count must be an integer in [0, {MAX_ITEMS}]")
        return list(range(v))
    if not isinstance(v, list) or len(v) > MAX_ITEMS:
        raise ProtocolError(f"{where}: keys must be a list of at most {MAX_ITEMS} names")
    if not all(isinstance(k, str) and 0 < len(k) <= 256 for k in v) or len(set(v)) != len(v):
        raise ProtocolError(f"{where}: keys must be distinct non-empty strings of ≤ 256 characters")
    return v


def _scalar(v: Any, kind: str, where: str) -> Any:
    ok = {
        "int": type(v) is int and -(2**63) <= v < 2**63,
        "bool": type(v) is bool,
        # an int here is a float the sender wrote without a fraction; bound it before float() can overflow
        "float": (type(v) is float and math.isfinite(v)) or (type(v) is int and -(2**63) <= v < 2**63),
        "str": isinstance(v, str) and len(v) <= MAX_TEXT,
        "dict": isinstance(v, dict),
    }[kind]
    if not ok:
        shown = "an integer out of range" if type(v) is int else type(v).__name__
        raise ProtocolError(f"{where}: expected {kind}, got {shown}")
    return float(v) if kind == "float" else v


def _check(cond: bool, msg: Message, what: str) -> None:
    if not cond:
        raise ProtocolError(f"{msg.TYPE}: {what}")


def _request_id(msg: Message) -> None:
    _check(0 <= msg.request_id < 2**53, msg, "request_id out of range")


@dataclass(frozen=True)
class ServerHello(Message):
    """S→C, first, unauthenticated: protocol version, a fresh nonce, the server's limits."""

    TYPE: ClassVar[str] = "server_hello"
    version: int
    server_nonce: bytes
    max_message_bytes: int
    chunk_bytes: int

    def validate(self) -> None:
        _check(len(self.server_nonce) == NONCE_BYTES, self, "nonce must be 32 bytes")
        _check(0 < self.chunk_bytes <= self.max_message_bytes, self, "chunk size outside (0, max message]")


@dataclass(frozen=True)
class ClientHello(Message):
    """C→S: the client's nonce, the session to resume ("" for a new one) and its key's fingerprint
    ("" for a new one); ``mac`` proves it holds the shared token (see ``auth``)."""

    TYPE: ClassVar[str] = "client_hello"
    version: int
    client_nonce: bytes
    session_id: str
    fingerprint: str
    mac: bytes

    def validate(self) -> None:
        _check(len(self.client_nonce) == NONCE_BYTES and len(self.mac) == 32, self, "nonce/mac length")
        _check(self.session_id == "" or bool(_SESSION_ID.fullmatch(self.session_id)), self, "bad session id")
        _check(self.fingerprint == "" or bool(_HEX64.fullmatch(self.fingerprint)), self, "bad fingerprint")


@dataclass(frozen=True)
class Welcome(Message):
    """S→C, the first authenticated message: the session id and what the server already holds
    (``status``: stage, uploaded parts, last checkpoint), so a reconnecting client skips what is done."""

    TYPE: ClassVar[str] = "welcome"
    session_id: str
    status: dict

    def validate(self) -> None:
        _check(bool(_SESSION_ID.fullmatch(self.session_id)), self, "bad session id")


@dataclass(frozen=True)
class ErrorMessage(Message):
    """Either way: the sender failed the exchange with a typed error (class name) and will close."""

    TYPE: ClassVar[str] = "error"
    error: str
    message: str


@dataclass(frozen=True)
class Ack(Message):
    """S→C: the previous request (``what``) was stored and checked."""

    TYPE: ClassVar[str] = "ack"
    what: str
    detail: dict


@dataclass(frozen=True)
class Bye(Message):
    """C→S: the client is done with this connection."""

    TYPE: ClassVar[str] = "bye"


@dataclass(frozen=True)
class FileBegin(Message):
    """C→S: a file follows in FileChunks (``target``: ``public_context`` or ``dataset/<name>/<file>``)."""

    TYPE: ClassVar[str] = "file_begin"
    target: str
    size: int
    sha256: str

    def validate(self) -> None:
        _check(bool(_NAME.fullmatch(self.target)) and ".." not in self.target, self, "bad target name")
        _check(0 < self.size < 2**50 and bool(_HEX64.fullmatch(self.sha256)), self, "bad size or sha256")


@dataclass(frozen=True)
class FileChunk(Message):
    """C→S: the next bytes of the file being uploaded, at ``offset``."""

    TYPE: ClassVar[str] = "file_chunk"
    offset: int
    data: bytes

    def validate(self) -> None:
        _check(self.offset >= 0 and len(self.data) > 0, self, "bad offset or empty chunk")


@dataclass(frozen=True)
class FileEnd(Message):
    """C→S: the file is complete; the server checks size and sha256, then answers Ack."""

    TYPE: ClassVar[str] = "file_end"
    target: str


@dataclass(frozen=True)
class DatasetBegin(Message):
    """C→S: an encrypted dataset follows; ``manifest`` is its manifest.json (storage.dataset)."""

    TYPE: ClassVar[str] = "dataset_begin"
    name: str
    manifest: dict


@dataclass(frozen=True)
class DatasetEnd(Message):
    """C→S: every file of the dataset was sent; the server verifies and commits it, then answers Ack."""

    TYPE: ClassVar[str] = "dataset_end"
    name: str


@dataclass(frozen=True)
class StartTraining(Message):
    """C→S: the training job (server.job) and the encrypted initial model; training starts."""

    TYPE: ClassVar[str] = "start_training"
    job: dict
    model: dict[str, bytes]


@dataclass(frozen=True)
class ResumeTraining(Message):
    """C→S: continue this session's training from its last checkpoint (after a reconnect)."""

    TYPE: ClassVar[str] = "resume_training"


@dataclass(frozen=True)
class RefreshRequest(Message):
    """S→C: ciphertexts out of levels (``protocol.ciphers`` bytes) and the op asking; answer RefreshReply."""

    TYPE: ClassVar[str] = "refresh_request"
    request_id: int
    ciphers: bytes
    stage: str = ""
    level: int = -1  # the level to answer at: the consumer uses no more (-1: the top)

    def validate(self) -> None:
        _request_id(self)
        _check(len(self.stage) <= 200 and self.stage.isprintable(), self, "stage is not a short printable name")
        _check(-1 <= self.level <= 64, self, "level must be -1 (the top) or a level of the context")


@dataclass(frozen=True)
class RefreshReply(Message):
    """C→S: fresh encryptions of the same values at the asked level (the top by default), in order."""

    TYPE: ClassVar[str] = "refresh_reply"
    request_id: int
    ciphers: bytes

    validate = _request_id


@dataclass(frozen=True)
class SoftmaxGradRequest(Message):
    """S→C (exact-softmax jobs): a training batch's encrypted logits (EncTensor bytes) and which
    kept batch they belong to; answer SoftmaxGradReply with (softmax(z) − Y)/rows."""

    TYPE: ClassVar[str] = "softmax_grad_request"
    request_id: int
    dataset: str
    index: int
    rows: int
    logits: bytes
    level: int = -1

    def validate(self) -> None:
        _request_id(self)
        _check(bool(_NAME.fullmatch(self.dataset)), self, "dataset is not a valid name")
        _check(0 <= self.index < 1 << 30 and 1 <= self.rows <= 1 << 20, self, "index/rows out of range")
        _check(-1 <= self.level <= 64, self, "level must be -1 (the top) or a level of the context")


@dataclass(frozen=True)
class SoftmaxGradReply(Message):
    """C→S: fresh encryptions of the gradient's blocks (``protocol.ciphers`` bytes) in the logits' layout."""

    TYPE: ClassVar[str] = "softmax_grad_reply"
    request_id: int
    grad: bytes

    validate = _request_id


@dataclass(frozen=True)
class EpochEndRequest(Message):
    """S→C: encrypted validation logits (one EncTensor per batch) and the state to refresh."""

    TYPE: ClassVar[str] = "epoch_end_request"
    request_id: int
    epoch: int
    dataset: str
    val_logits: list[bytes]
    state: dict[str, bytes]

    def validate(self) -> None:
        _request_id(self)
        _check(0 <= self.epoch < 2**31, self, "epoch out of range")


@dataclass(frozen=True)
class EpochVerdictReply(Message):
    """C→S: the continue/stop bit and fresh encryptions of the state (the server learns nothing else)."""

    TYPE: ClassVar[str] = "epoch_verdict"
    request_id: int
    stop: bool
    refreshed: dict[str, bytes]

    validate = _request_id


@dataclass(frozen=True)
class BestStateRequest(Message):
    """S→C: training ended; send fresh encryptions of the best epoch's weights."""

    TYPE: ClassVar[str] = "best_state_request"
    request_id: int

    validate = _request_id


@dataclass(frozen=True)
class BestStateReply(Message):
    """C→S: the best epoch's weights, encrypted afresh."""

    TYPE: ClassVar[str] = "best_state"
    request_id: int
    state: dict[str, bytes]

    validate = _request_id


@dataclass(frozen=True)
class Progress(Message):
    """S→C, no reply: a step finished (``info``: seconds, refreshes, weight level)."""

    TYPE: ClassVar[str] = "progress"
    epoch: int
    step: int
    info: dict


@dataclass(frozen=True)
class TrainingDone(Message):
    """S→C: training finished and the final model is stored; ``summary`` counts steps and refreshes."""

    TYPE: ClassVar[str] = "training_done"
    summary: dict


@dataclass(frozen=True)
class FetchModel(Message):
    """C→S: send the final encrypted model."""

    TYPE: ClassVar[str] = "fetch_model"


@dataclass(frozen=True)
class ModelState(Message):
    """S→C: the final encrypted model (EncTensor bytes by parameter name) and the run's summary."""

    TYPE: ClassVar[str] = "model_state"
    state: dict[str, bytes]
    summary: dict


#: The most rows one inference request may declare (a server's own limit, ``--max-infer-rows``, is lower).
MAX_INFER_ROWS = 1 << 20


@dataclass(frozen=True)
class InferRequest(Message):
    """C→S, once training is done: ``rows`` samples' features, one EncTensor of shape (rows, in_features)
    in the training data's block shape, freshly encrypted; answer InferReply (the server learns ``rows``)."""

    TYPE: ClassVar[str] = "infer_request"
    request_id: int
    rows: int
    x: bytes

    def validate(self) -> None:
        _request_id(self)
        _check(1 <= self.rows <= MAX_INFER_ROWS, self, f"rows must be in [1, {MAX_INFER_ROWS}]")


@dataclass(frozen=True)
class InferReply(Message):
    """S→C: the trained model's encrypted logits of those rows (one EncTensor, rows × out_features)."""

    TYPE: ClassVar[str] = "infer_reply"
    request_id: int
    rows: int
    logits: bytes

    def validate(self) -> None:
        _request_id(self)
        _check(1 <= self.rows <= MAX_INFER_ROWS, self, f"rows must be in [1, {MAX_INFER_ROWS}]")
