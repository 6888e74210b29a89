"""One training session on the server: its directory, its uploads, its training run.

A session holds only public material: the client's PublicContext, its encrypted datasets, the
encrypted model, optimizer state and checkpoints. Its directory::

    session.json           stage (upload → training → done), key fingerprint, last checkpoint
    public_context.et      the client's PublicContext (a SecretContext is refused on its first bytes)
    data/train/, data/val/ encrypted datasets (storage.dataset format)
    job.json, init_model.et the training job and the client's encrypted initial weights
    checkpoint.et          the latest resume point (storage.checkpoint)
    final_model.et         the trained model, once done
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..ckks import serialize
from ..ckks.public import PublicContext
from ..errors import EncTorchError, KeyRoleError
from ..protocol.channel import Channel
from ..protocol.ciphers import decode_tensors, encode_tensors
from ..protocol.errors import ProtocolError, SessionError
from ..protocol.messages import (
    Ack,
    DatasetBegin,
    DatasetEnd,
    FetchModel,
    FileBegin,
    FileChunk,
    FileEnd,
    Message,
    ModelState,
    ResumeTraining,
    StartTraining,
    TrainingDone,
)
from ..storage.atomic import atomic_write_json, fsync_dir, tmp_path_for
from ..storage.checkpoint import Checkpointer, load_checkpoint, save_checkpoint
from ..storage.dataset import MANIFEST, FileEntry, Manifest, StreamingLoader, open_dataset
from ..storage.errors import CheckpointError, ChecksumError, ManifestError
from ..storage.jsonio import loads_strict
from ..training.trainer import Trainer
from .job import Builder, validate_job
from .link import NetworkKeyOwner, ProgressReporter, Superseded

ROLES = ("train", "val")


@dataclass
class Limits:
    """Timeouts and sizes a session enforces on its client."""

    idle_timeout: float = 600.0
    reply_timeout: float = 600.0
    attach_timeout: float = 120.0
    max_file_bytes: int = 1 << 40


class Session:
    """A client's session; one connection at a time drives it (``attach``/``detach``)."""

    def __init__(self, directory: Path, record: dict[str, Any], limits: Limits, builders: dict[str, Builder]):
        self.dir, self.record, self.limits, self.builders = directory, record, limits, builders
        self.id = directory.name
        self.generation = 0
        self._lock = threading.Lock()
        self._gen_lock = threading.Lock()
        self._channel: Channel | None = None
        self._ctx: PublicContext | None = None
        self._pending: dict[str, tuple[Manifest, set[str]]] = {}

    @classmethod
    def create(cls, root: Path, limits: Limits, builders: dict[str, Builder]) -> Session:
        """A new session with a random 128-bit id and its own directory (mode 0700)."""
        sid = secrets.token_hex(16)
        directory = root / sid
        directory.mkdir(mode=0o700)
        session = cls(directory, {"id": sid, "created": time.time(), "stage": "upload", "fingerprint": None,
                                  "checkpoint": None, "summary": None}, limits, builders)
        session._save_record()
        return session

    @classmethod
    def load(cls, directory: Path, limits: Limits, builders: dict[str, Builder]) -> Session:
        """A session from its directory (server restart with --resume)."""
        record = loads_strict((directory / "session.json").read_bytes(), "session record")
        if not isinstance(record, dict) or record.get("id") != directory.name or record.get("stage") not in (
                "upload", "training", "done"):
            raise SessionError(f"{directory}: not a session directory")
        return cls(directory, record, limits, builders)

    def _save_record(self) -> None:
        atomic_write_json(self.dir / "session.json", self.record, mode=0o600)

    @property
    def fingerprint(self) -> str | None:
        return self.record["fingerprint"]

    def context(self) -> PublicContext:
        if self._ctx is None:
            if self.fingerprint is None:
                raise SessionError("upload the public context first")
            self._ctx = PublicContext.from_bytes((self.dir / "public_context.et").read_bytes())
        return self._ctx

    def status(self) -> dict[str, Any]:
        """What the Welcome tells the client: stage, uploaded parts, last checkpoint, summary."""
        return {"stage": self.record["stage"], "fingerprint": self.fingerprint,
                "have": {"public_context": self.fingerprint is not None,
                         **{r: (self.dir / "data" / r / MANIFEST).exists() for r in ROLES},
                         "job": (self.dir / "job.json").exists()},
                "checkpoint": self.record["checkpoint"], "summary": self.record["summary"]}

    # --- connections ----------------------------------------------------------------------------------
    def attach(self, channel: Channel) -> int:
        """Make ``channel`` the session's connection; an older one is closed and its run stops."""
        with self._gen_lock:
            self.generation += 1
            generation, old = self.generation, self._channel
        if old is not None:
            old.close(1001, "superseded by a newer connection")
        if not self._lock.acquire(timeout=self.limits.attach_timeout):
            raise SessionError(f"session {self.id[:8]} is still busy with an older connection")
        self._channel = channel
        return generation

    def detach(self) -> None:
        self._channel = None
        self._lock.release()

    def serve(self, channel: Channel, generation: int) -> None:
        """Answer the client's requests until it says Bye."""
        handlers: dict[type[Message], Callable[[Channel, Any, int], None]] = {
            FileBegin: self._file, DatasetBegin: self._dataset_begin, DatasetEnd: self._dataset_end,
            StartTraining: self._start_training, ResumeTraining: self._resume_training,
            FetchModel: self._fetch_model,
        }
        while True:
            msg = channel.recv(self.limits.idle_timeout)
            if msg.TYPE == "bye":
                return
            handler = handlers.get(type(msg))
            if handler is None:
                raise ProtocolError(f"a client may not send {msg.TYPE} here")
            handler(channel, msg, generation)

    # --- uploads --------------------------------------------------------------------------------------------
    def _file(self, channel: Channel, begin: FileBegin, generation: int) -> None:
        if begin.size > self.limits.max_file_bytes:
            raise SessionError(f"a {begin.size}-byte file is over this server's {self.limits.max_file_bytes}")
        if begin.target == "public_context":
            self._public_context(channel, begin)
            return
        parts = begin.target.split("/")
        if len(parts) != 3 or parts[0] != "dataset" or parts[1] not in self._pending:
            raise ProtocolError(f"no upload is open for {begin.target!r}")
        manifest, received = self._pending[parts[1]]
        entry = next((f for f in manifest.files() if f.file == parts[2]), None)
        where = f"upload:{begin.target}"
        if entry is None or parts[2] in received:
            raise ManifestError(where, "not in the manifest, or sent twice")
        if (entry.bytes, entry.sha256) != (begin.size, begin.sha256):
            raise ManifestError(where, "size or sha256 differs from the manifest's")
        _receive_file(channel, begin, self.dir / "data" / f"{parts[1]}.partial" / parts[2], self.limits)
        received.add(parts[2])
        channel.send(Ack(begin.target, {}))

    def _public_context(self, channel: Channel, begin: FileBegin) -> None:
        if self.fingerprint is not None:
            raise SessionError("this session already has its public context")
        dest = self.dir / "public_context.et"
        _receive_file(channel, begin, dest, self.limits, check_first=_refuse_secret)
        try:
            ctx = PublicContext.from_bytes(dest.read_bytes())
        except EncTorchError:
            dest.unlink(missing_ok=True)
            raise
        self._ctx, self.record["fingerprint"] = ctx, ctx.fingerprint
        self._save_record()
        channel.send(Ack("public_context", {"fingerprint": ctx.fingerprint, "preset": ctx.params.name}))

    def _dataset_begin(self, channel: Channel, msg: DatasetBegin, generation: int) -> None:
        ctx = self.context()
        if msg.name not in ROLES or (self.dir / "data" / msg.name).exists():
            raise SessionError(f"dataset role must be one of {ROLES} and not uploaded yet, got {msg.name!r}")
        where = f"upload:{msg.name}/{MANIFEST}"
        manifest = Manifest.from_json(msg.manifest, where)
        manifest.check_context(ctx, where)
        if msg.name == "train" and not manifest.has_labels:
            raise ManifestError(where, "a training set needs encrypted labels")
        partial = self.dir / "data" / f"{msg.name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        self._pending[msg.name] = (manifest, set())
        channel.send(Ack("dataset_begin", {"files": len(manifest.files())}))

    def _dataset_end(self, channel: Channel, msg: DatasetEnd, generation: int) -> None:
        if msg.name not in self._pending:
            raise ProtocolError(f"no dataset upload open for {msg.name!r}")
        manifest, received = self._pending.pop(msg.name)
        missing = {f.file for f in manifest.files()} - received
        if missing:
            raise ManifestError(f"upload:{msg.name}", f"{len(missing)} file(s) never arrived, e.g. {min(missing)}")
        partial, final = self.dir / "data" / f"{msg.name}.partial", self.dir / "data" / msg.name
        atomic_write_json(partial / MANIFEST, manifest.to_json())
        os.replace(partial, final)
        fsync_dir(final.parent)
        ds = open_dataset(final, self.context())
        channel.send(Ack(f"dataset/{msg.name}", {"batches": len(ds), "samples": ds.num_samples}))

    # --- training -------------------------------------------------------------------------------------------
    def _start_training(self, channel: Channel, msg: StartTraining, generation: int) -> None:
        if self.record["stage"] != "upload":
            raise SessionError("training already started in this session; send resume_training")
        if not all((self.dir / "data" / r / MANIFEST).exists() for r in ROLES):
            raise SessionError("upload the training and validation sets first")
        ctx = self.context()
        job = validate_job(msg.job, self.builders)
        init = decode_tensors(msg.model, ctx)
        unit = open_dataset(self.dir / "data" / "train", ctx).unit
        built = self.builders[job["model"]](ctx, job, init, unit)  # validates the weights against the job
        save_checkpoint(self.dir / "init_model.et", {"model": init}, ctx.fingerprint)
        atomic_write_json(self.dir / "job.json", job)
        self.record["stage"] = "training"
        self._save_record()
        self._train(channel, generation, built)

    def _resume_training(self, channel: Channel, msg: ResumeTraining, generation: int) -> None:
        if self.record["stage"] == "upload":
            raise SessionError("nothing to resume: training has not started")
        if self.record["stage"] == "done":
            channel.send(TrainingDone(self.record["summary"]))
            return
        self._train(channel, generation)

    def _train(self, channel: Channel, generation: int, built: tuple | None = None) -> None:
        ctx = self.context()
        job = validate_job(loads_strict((self.dir / "job.json").read_bytes(), "job"), self.builders)
        train = open_dataset(self.dir / "data" / "train", ctx)
        val = open_dataset(self.dir / "data" / "val", ctx)
        if built is None:
            init = load_checkpoint(self.dir / "init_model.et", ctx)["model"]
            built = self.builders[job["model"]](ctx, job, init, train.unit)
        model, optimizer, criterion = built
        link = NetworkKeyOwner(channel, ctx, self.limits.reply_timeout)
        ckpt_path = self.dir / "checkpoint.et"
        checkpointer = Checkpointer(ckpt_path, ctx.fingerprint, job["checkpoint_every"], on_save=self._saved)
        trainer = Trainer(model, optimizer, link, criterion, progress=False,
                          callbacks=[checkpointer, ProgressReporter(channel), Superseded(self, generation)])
        resumed_from = None
        if ckpt_path.exists():
            state = load_checkpoint(ckpt_path, ctx)
            try:
                trainer.load_state_dict(state)
                resumed_from = {"epoch": int(state["epoch"]), "step": int(state["step"])}
            except (KeyError, TypeError, ValueError, IndexError) as err:
                raise CheckpointError(ckpt_path, f"cannot restore training from it: {err!r}") from None
        loader = StreamingLoader(train, shuffle=True, seed=job["seed"], max_steps=job["max_steps"])
        start = time.perf_counter()
        result = trainer.fit(loader, val, job["epochs"])
        summary = {"epochs_run": result.epochs_run, "stopped_epoch": result.stopped_epoch,
                   "steps": len(result.steps), "seconds_per_step": round(result.mean_step_seconds(), 4),
                   "refreshes_per_step": round(result.refreshes_per_step(), 3),
                   "run_seconds": round(time.perf_counter() - start, 3), "resumed_from": resumed_from,
                   "key_owner_round_trips": link.round_trips, "bytes_sent": channel.bytes_sent,
                   "bytes_received": channel.bytes_received}
        save_checkpoint(self.dir / "final_model.et", {"model": dict(model.state_dict())}, ctx.fingerprint)
        self.record.update(stage="done", summary=summary)
        self._save_record()
        channel.send(TrainingDone(summary))

    def _saved(self, info: dict[str, int]) -> None:
        self.record["checkpoint"] = info
        self._save_record()

    def _fetch_model(self, channel: Channel, msg: FetchModel, generation: int) -> None:
        if self.record["stage"] != "done":
            raise SessionError("the model is not trained yet")
        model = load_checkpoint(self.dir / "final_model.et", self.context())["model"]
        channel.send(ModelState(encode_tensors(model), self.record["summary"]))


def _refuse_secret(first: bytes) -> None:
    """Look at a context upload's header before storing a byte: a secret key never touches disk."""
    magic = serialize.MAGIC
    if not first.startswith(magic) or len(first) < len(magic) + 3:
        raise ProtocolError("the public context upload does not start with encrypted_torch framing")
    (n,) = struct.unpack_from("<H", first, len(magic) + 1)
    kind = first[len(magic) + 3 : len(magic) + 3 + n]
    if kind == b"secret_context":
        raise KeyRoleError("the server refuses a secret key: upload SecretContext.public_bytes(), "
                           "never the SecretContext itself")
    if kind != b"public_context":
        raise ProtocolError(f"expected a public_context upload, got {kind[:40]!r}")


def _receive_file(channel: Channel, begin: FileBegin, dest: Path, limits: Limits,
                  check_first: Callable[[bytes], None] | None = None) -> FileEntry:
    """Stream FileChunks to ``dest`` (atomically), checking order, size and sha256."""
    tmp = tmp_path_for(dest)
    digest, received = hashlib.sha256(), 0
    try:
        with open(tmp, "wb") as f:
            while True:
                msg = channel.recv(limits.idle_timeout)
                if isinstance(msg, FileEnd):
                    if msg.target != begin.target:
                        raise ProtocolError(f"file_end for {msg.target!r} while {begin.target!r} is open")
                    break
                if not isinstance(msg, FileChunk):
                    raise ProtocolError(f"{msg.TYPE} in the middle of uploading {begin.target!r}")
                if msg.offset != received or received + len(msg.data) > begin.size:
                    raise ProtocolError(f"chunk at {msg.offset} (+{len(msg.data)}) of {begin.target!r}: "
                                        f"expected offset {received} within {begin.size} bytes")
                if received == 0 and check_first is not None:
                    check_first(msg.data)
                digest.update(msg.data)
                f.write(msg.data)
                received += len(msg.data)
            f.flush()
            os.fsync(f.fileno())
        if received != begin.size:
            raise ProtocolError(f"{begin.target!r} ended after {received} of {begin.size} bytes")
        if digest.hexdigest() != begin.sha256:
            raise ChecksumError(f"upload:{begin.target}", "sha256 of the received bytes differs from the announced")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(dest.parent)
    return FileEntry(dest.name, received, begin.sha256)
