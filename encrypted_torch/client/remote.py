"""The key owner's side of a remote training session: upload, answer the server, download.

>>> session = RemoteSession("ws://127.0.0.1:8765", token, key_owner)        # doctest: +SKIP
>>> session.connect(); session.upload(train_dir, val_dir)                    # doctest: +SKIP
>>> summary = session.train(job, {"weight_bias": w0}); model = session.fetch_model()   # doctest: +SKIP

The server asks for refreshes and epoch verdicts; this class answers them through the
``KeyOwner`` (which holds the SecretContext; nothing secret is ever sent). If the connection
drops, it reconnects with the session id and the server continues from its last checkpoint.
The server may then replay an epoch end it had already asked about: the key owner answers with
the verdict it recorded (an epoch is judged exactly once). What the key owner answers at all is
held to its own copy of the job (``client.policy``); a refusal or a DomainError ends the job
and is reported to the server before the connection closes.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import ssl
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from websockets.exceptions import WebSocketException
from websockets.sync.client import connect

from ..ckks import serialize
from ..data.dataset import EncDataset, KeptLabels
from ..errors import DomainError, EncTorchError, JobPolicyError, SerializationError
from ..protocol import auth
from ..protocol.channel import DEFAULT_MAX_MESSAGE_BYTES, PREAUTH_MAX_BYTES, Channel, client_handshake
from ..protocol.ciphers import decode_ciphers, decode_tensor_list, decode_tensors, encode_payloads, encode_tensors
from ..protocol.errors import AuthenticationError, ConnectionLostError, ProtocolError
from ..protocol.messages import (
    Ack,
    BestStateReply,
    BestStateRequest,
    Bye,
    DatasetBegin,
    DatasetEnd,
    EpochEndRequest,
    EpochVerdictReply,
    FetchModel,
    FileBegin,
    FileChunk,
    FileEnd,
    ModelState,
    Progress,
    RefreshReply,
    RefreshRequest,
    ResumeTraining,
    SoftmaxGradReply,
    SoftmaxGradRequest,
    StartTraining,
    TrainingDone,
)
from ..protocol.wire import wire_cuts
from ..storage.atomic import atomic_write_bytes, read_bounded, sha256_file
from ..storage.dataset import Manifest, read_manifest, write_dataset
from ..storage.errors import StorageError
from ..tensor.enctensor import EncTensor
from ..tensor.layout import BlockLayout
from ..training.job import softmax_config as job_softmax_config
from ..training.refresh_plan import RefreshPlan
from .key_owner import KeyOwner
from .policy import plan_job, replay_steps


@dataclass
class RetryPolicy:
    """How long to keep reconnecting after the connection drops (bounded in count and time)."""

    attempts: int = 60
    first_delay: float = 0.2
    max_delay: float = 3.0
    deadline: float = 300.0


class RemoteSession:
    """One training session on a ``python -m encrypted_torch.server``, driven from the key owner's side."""

    def __init__(self, url: str, token: str | bytes, key_owner: KeyOwner, *, session_id: str | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, timeout: float = 600.0,
                 retry: RetryPolicy | None = None, state_path: str | Path | None = None,
                 on_progress: Callable[[Progress], None] | None = None, cafile: str | Path | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.url, self.token, self.key_owner = url, auth.check_token(token), key_owner
        self.ssl_context = ssl_context  # wss:// only; default: the system's CAs, or cafile's
        if ssl_context is None and cafile is not None:
            self.ssl_context = ssl.create_default_context(cafile=str(cafile))
        self.session_id = session_id
        self.max_message_bytes, self.timeout = max_message_bytes, timeout
        self.retry = retry or RetryPolicy()
        self.state_path = Path(state_path) if state_path else None
        self.on_progress = on_progress
        self.status: dict[str, Any] = {}
        self.reconnects = 0
        self.refreshed_ciphers = 0
        self.gradient_requests = 0
        self.cuts = wire_cuts()
        self._channel: Channel | None = None
        self._chunk = 1 << 20
        self._manifests: dict[str, Manifest] = {}
        if self.state_path is not None and self.state_path.exists():
            self._load_state()

    @property
    def ctx(self) -> Any:
        return self.key_owner.public_context

    def connect(self) -> dict[str, Any]:
        """Open (or resume) the session; returns what the server already holds."""
        stack = contextlib.ExitStack()  # connect() is a context manager in every websockets version we accept
        tls = {"ssl": self.ssl_context} if self.url.startswith("wss://") and self.ssl_context else {}
        try:
            ws = stack.enter_context(connect(self.url, max_size=PREAUTH_MAX_BYTES + auth.HEADER_BYTES,
                                             compression=None, max_queue=4, open_timeout=30, ping_interval=20,
                                             ping_timeout=120, **tls))
        except ssl.SSLCertVerificationError as err:  # not transient: no reconnect will fix it
            raise AuthenticationError(f"the server's TLS certificate failed verification ({err.verify_message}); "
                                      "pass the CA that signed it (--cafile)") from None
        except ssl.SSLError as err:
            raise ConnectionLostError(f"TLS handshake with {self.url} failed: {err}") from None
        try:
            fingerprint = self.ctx.fingerprint if self.session_id else ""
            channel, welcome, hello = client_handshake(ws, self.token, self.session_id or "", fingerprint,
                                                       self.max_message_bytes, timeout=60)
        except BaseException:
            stack.close()
            raise
        self._channel, self.status, self._chunk = channel, welcome.status, hello.chunk_bytes
        self.session_id = welcome.session_id
        self._save_state()
        return self.status

    def close(self) -> None:
        if self._channel is not None:
            try:
                self._channel.send(Bye())
            except EncTorchError:
                pass
            self._channel.close()
            self._channel = None

    def _reconnect(self, cause: BaseException) -> None:
        start, delay = time.monotonic(), self.retry.first_delay
        for _ in range(self.retry.attempts):
            if time.monotonic() - start > self.retry.deadline:
                break
            time.sleep(delay)
            delay = min(2 * delay, self.retry.max_delay)
            try:
                self.connect()
                self.reconnects += 1
                return
            except (ConnectionLostError, OSError, TimeoutError, WebSocketException):
                continue
        raise ConnectionLostError(f"could not reconnect to {self.url} within {self.retry.deadline} s "
                                  f"after: {cause}") from cause

    def _with_reconnect(self, fn: Callable[[], Any]) -> Any:
        while True:
            try:
                if self._channel is None:
                    self.connect()
                return fn()
            except ConnectionLostError as err:
                if self._channel is not None:
                    self._channel.close()
                self._channel = None
                self._reconnect(err)

    @property
    def channel(self) -> Channel:
        if self._channel is None:
            raise ConnectionLostError("not connected; call connect()")
        return self._channel

    def upload(self, train: EncDataset | str | Path, val: EncDataset | str | Path) -> None:
        """Send the public context and both datasets (skipping what the server already holds)."""
        with tempfile.TemporaryDirectory(prefix="et-upload-") as tmp:
            dirs = {role: _as_directory(ds, Path(tmp) / role) for role, ds in (("train", train), ("val", val))}
            self._manifests = {role: read_manifest(d) for role, d in dirs.items()}
            self._with_reconnect(lambda: self._upload_all(dirs))

    def _upload_all(self, dirs: dict[str, Path]) -> None:
        have = self.status.get("have", {})
        if not have.get("public_context"):
            self._send_file("public_context", self.key_owner.secret.public_bytes())
        for role, directory in dirs.items():
            if have.get(role):
                continue
            manifest = read_manifest(directory)
            self.channel.send(DatasetBegin(role, manifest.to_json()))
            self.channel.expect(Ack, self.timeout)
            for entry in manifest.files():
                self._send_file(f"dataset/{role}/{entry.file}", directory / entry.file)
            self.channel.send(DatasetEnd(role))
            self.channel.expect(Ack, self.timeout)

    def _send_file(self, target: str, source: bytes | Path) -> None:
        if isinstance(source, Path):
            digest, size = sha256_file(source)
            stream: Any = open(source, "rb")  # closed by the with below
        else:
            digest, size, stream = hashlib.sha256(source).hexdigest(), len(source), io.BytesIO(source)
        with stream:
            self.channel.send(FileBegin(target, size, digest))
            offset = 0
            while chunk := stream.read(self._chunk):
                self.channel.send(FileChunk(offset, chunk))
                offset += len(chunk)
        self.channel.send(FileEnd(target))
        self.channel.expect(Ack, self.timeout)

    def train(self, job: dict[str, Any], init_model: dict[str, EncTensor], *,
              builders: dict[str, Any] | None = None) -> dict[str, Any]:
        """Start (or resume) training and answer the server until it is done; returns its summary.

        The key owner answers only what this job plans (``client.policy``): its refreshes by stage
        and level, one verdict per epoch, within the job's epochs. ``builders``: the client's copy of
        the job builders (``training.job.BUILDERS``), from which it computes that plan."""
        owner = self.key_owner
        if set(self._manifests) != {"train", "val"}:
            if self.status.get("stage") != "done":
                raise JobPolicyError("call upload() before train(): the key owner plans the job from its datasets")
            owner.expect(RefreshPlan.nothing())  # a finished session: only its summary is expected
        model = encode_tensors(init_model)
        if owner.policy.plan is None:
            train = self._manifests["train"]
            policy_state = owner.policy.state_dict()
            owner.expect(plan_job(self.ctx, job, init_model, train, self._manifests["val"], builders),
                         replay_steps=replay_steps(job, train),
                         softmax_config=job_softmax_config(job))
            owner.policy.load_state_dict(policy_state)  # verdicts already given (a restarted client)
        if owner.num_classes is None and "train" in self._manifests:
            owner.num_classes = self._manifests["train"].num_classes

        def run() -> dict[str, Any]:
            if self.status.get("stage") == "upload":
                self.channel.send(StartTraining(job, model))
            else:
                owner.policy.resumed()
                self.channel.send(ResumeTraining())
            return self._answer_until_done()

        return self._with_reconnect(run)

    def _answer_until_done(self) -> dict[str, Any]:
        ch = self.channel
        while True:
            msg = ch.recv(self.timeout)
            if isinstance(msg, TrainingDone):
                self.status["stage"] = "done"
                return msg.summary
            if isinstance(msg, Progress):
                if self.on_progress is not None:
                    self.on_progress(msg)
                continue
            try:
                ch.send(self._answer(msg))
            except (DomainError, JobPolicyError) as err:  # the job ends here; the server keeps its checkpoint
                self._save_state()
                ch.fail(err)
                self._channel = None
                raise

    def _answer(self, msg: Any) -> Any:
        if isinstance(msg, RefreshRequest):
            ciphers = decode_ciphers(msg.ciphers, self.ctx)
            records, payloads = self.key_owner.refresh_payloads(ciphers, stage=msg.stage, level=_level(msg.level),
                                                                seeded="seeded" in self.cuts)
            self.refreshed_ciphers += len(payloads)
            return RefreshReply(msg.request_id, encode_payloads(self.ctx.fingerprint, records, payloads))
        if isinstance(msg, SoftmaxGradRequest):
            logits = EncTensor.from_bytes(msg.logits, self.ctx)
            records, payloads = self.key_owner.softmax_gradient_payloads(
                logits, KeptLabels(msg.dataset, msg.index, msg.rows), level=_level(msg.level),
                seeded="seeded" in self.cuts)
            self.gradient_requests += 1
            return SoftmaxGradReply(msg.request_id, encode_payloads(self.ctx.fingerprint, records, payloads))
        if isinstance(msg, EpochEndRequest):
            return self._judge(msg)
        if isinstance(msg, BestStateRequest):
            return BestStateReply(msg.request_id, encode_tensors(self.key_owner.best_state()))
        raise ProtocolError(f"unexpected {msg.TYPE} during training")

    def _judge(self, req: EpochEndRequest) -> EpochVerdictReply:
        logits = decode_tensor_list(req.val_logits, self.ctx)
        state = decode_tensors(req.state, self.ctx)
        verdict = self.key_owner.end_epoch(req.epoch, req.dataset, logits, state)
        self._save_state()
        return EpochVerdictReply(req.request_id, verdict.stop, encode_tensors(verdict.refreshed))

    def fetch_model(self) -> dict[str, EncTensor]:
        """The trained model, still encrypted (decrypt with the key owner's SecretContext)."""
        def run() -> dict[str, EncTensor]:
            self.channel.send(FetchModel())
            return decode_tensors(self.channel.expect(ModelState, self.timeout).state, self.ctx)

        return self._with_reconnect(run)

    def _save_state(self) -> None:
        if self.state_path is None:
            return
        sections: dict[str, bytes] = {}
        meta = {"session_id": self.session_id, "url": self.url,
                "current": _flatten_owner(self.key_owner.state_dict(), "cur.", sections)}
        atomic_write_bytes(self.state_path, serialize.pack("client_state", {"meta": serialize.dumps_json(meta),
                                                                             **sections}), mode=0o600)

    def _load_state(self) -> None:
        """Restore what ``_save_state`` wrote; anything malformed is a StorageError naming the file (the
        file may have been damaged or replaced, so it is read like bytes from a stranger)."""
        path = self.state_path
        assert path is not None
        raw = read_bounded(path, 1 << 32, "client session state")
        try:
            sections = serialize.unpack(raw, "client_state")
            meta = serialize.loads_json(serialize.require(sections, "meta")[0], "client state")
            if not isinstance(meta, dict) or not {"session_id", "current"} <= set(meta):
                raise SerializationError("the state must hold session_id and current")
            session_id = meta["session_id"]
            if session_id is not None and not (isinstance(session_id, str) and len(session_id) == 32
                                               and set(session_id) <= set("0123456789abcdef")):
                raise SerializationError("session_id must be null or 32 lowercase hex digits")
            state = _restore_owner(meta["current"], sections, set(self.key_owner.early_stopping.state_dict()))
        except EncTorchError as err:
            raise StorageError(path, f"cannot restore the client's session state: {err}") from None
        try:
            self.key_owner.load_state_dict(state)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:  # the policy's own record
            raise StorageError(path, f"cannot restore the key owner's state: {err!r}"[:300]) from None
        self.session_id = self.session_id or session_id


def _as_directory(ds: EncDataset | str | Path, tmp: Path) -> Path:
    if isinstance(ds, (str, Path)):
        return Path(ds)
    write_dataset(ds, tmp)
    return tmp


def _tensor_bytes(t: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    np.save(buf, t.detach().cpu().numpy(), allow_pickle=False)
    return buf.getvalue()


def _flatten_owner(state: dict[str, Any], prefix: str, sections: dict[str, bytes]) -> dict[str, Any]:
    def put(name: str, t: torch.Tensor) -> str:
        sections[prefix + name] = _tensor_bytes(t)
        return prefix + name

    best = state["best"]
    out = {"early_stopping": _json_numbers(state["early_stopping"]),
           "history": [_json_numbers(h) for h in state["history"]],
           "best": None if best is None else {k: put(f"best.{k}", v) for k, v in best.items()},
           "layouts": {k: [list(v.shape), list(v.unit), v.tiling] for k, v in state["layouts"].items()},
           "val_labels": {k: put(f"labels.{k}", v) for k, v in state["val_labels"].items()}}
    for key in ("policy", "batch_sizes"):
        if key in state:
            out[key] = state[key]
    return out


_NON_FINITE = {"inf": float("inf"), "-inf": float("-inf"), "nan": float("nan")}


def _json_numbers(d: dict[str, Any]) -> dict[str, Any]:
    """Non-finite floats as the strings "inf", "-inf", "nan" (strict JSON has no Infinity or NaN)."""
    return {k: (str(v) if isinstance(v, float) and (v != v or abs(v) == float("inf")) else v) for k, v in d.items()}


def _numbers(d: Any, what: str, keys: set[str] | None = None) -> dict[str, Any]:
    """Inverse of ``_json_numbers``, accepting only a flat object of numbers (with exactly ``keys``)."""
    if not isinstance(d, dict) or (keys is not None and set(d) != keys):
        raise SerializationError(f"{what} must be an object" + (f" with {sorted(keys)}" if keys else ""))
    out = {}
    for k, v in d.items():
        if isinstance(v, str) and v in _NON_FINITE:
            v = _NON_FINITE[v]
        elif type(v) not in (int, float):
            raise SerializationError(f"{what}.{k[:40]} must be a number")
        out[k] = v
    return out


def _restore_owner(meta: Any, sections: dict[str, bytes], early_stopping_keys: set[str]) -> dict[str, Any]:
    """The key owner's state from ``_flatten_owner``'s record; SerializationError if anything is off."""
    def names(v: Any, what: str) -> dict[str, Any]:
        if not isinstance(v, dict):
            raise SerializationError(f"{what} must be an object")
        return v

    def get(name: Any, what: str) -> torch.Tensor:
        if not isinstance(name, str) or name not in sections or name == "meta":
            raise SerializationError(f"{what}: no section {str(name)[:40]!r}")
        return torch.from_numpy(serialize.load_npy(sections[name], what))

    def layout(k: str, v: Any) -> BlockLayout:
        if not (isinstance(v, list) and len(v) == 3 and isinstance(v[2], str)
                and all(isinstance(p, list) and len(p) == 2 and all(type(x) is int for x in p) for p in v[:2])):
            raise SerializationError(f"layout {k[:40]!r} must be [shape, unit, tiling]")
        return BlockLayout(tuple(v[0]), tuple(v[1]), v[2])  # ShapeError is an EncTorchError

    meta = names(meta, "the key owner's state")
    required = {"early_stopping", "history", "best", "layouts", "val_labels"}
    if not required <= set(meta) <= required | {"policy", "batch_sizes"}:
        raise SerializationError(f"the key owner's state must hold {sorted(required)} (and maybe policy, "
                                 "batch_sizes)")
    if not isinstance(meta["history"], list):
        raise SerializationError("history must be a list")
    best = meta["best"]
    out = {"early_stopping": _numbers(meta["early_stopping"], "early_stopping", early_stopping_keys),
           "history": [_numbers(h, f"history[{i}]") for i, h in enumerate(meta["history"])],
           "best": None if best is None else {k: get(v, f"best.{k}") for k, v in names(best, "best").items()},
           "layouts": {k: layout(k, v) for k, v in names(meta["layouts"], "layouts").items()},
           "val_labels": {k: get(v, f"labels.{k}") for k, v in names(meta["val_labels"], "val_labels").items()}}
    if "policy" in meta:
        out["policy"] = names(meta["policy"], "policy")
    if "batch_sizes" in meta:
        sizes = names(meta["batch_sizes"], "batch_sizes")
        if not all(type(v) is int and 1 <= v <= 1 << 30 for v in sizes.values()):
            raise SerializationError("batch_sizes must map names to positive whole numbers")
        out["batch_sizes"] = sizes
    return out


def _level(wire_level: int) -> int | None:
    """A request's reply level: -1 on the wire is the top (None)."""
    return None if wire_level < 0 else wire_level


def token_from_env_or_file(path: str | Path | None) -> bytes:
    """The shared token (``--token-file`` or $ENCRYPTED_TORCH_TOKEN)."""
    return auth.read_token(path)
