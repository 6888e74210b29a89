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
import logging
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..ckks.public import PublicContext
from ..errors import EncTorchError
from ..protocol.channel import Channel
from ..protocol.ciphers import decode_tensors, encode_tensors
from ..protocol.errors import JobConfigError, ProtocolError, SessionError
from ..protocol.messages import (
    Ack,
    DatasetBegin,
    DatasetEnd,
    FetchModel,
    FileBegin,
    FileChunk,
    FileEnd,
    InferRequest,
    Message,
    ModelState,
    ResumeTraining,
    StartTraining,
    TrainingDone,
)
from ..storage.atomic import atomic_write_json, fsync_dir, read_bounded, tmp_path_for
from ..storage.checkpoint import Checkpointer, load_checkpoint, save_checkpoint
from ..storage.dataset import MANIFEST, FileEntry, Manifest, StreamingLoader, open_dataset, read_manifest, verify_files
from ..storage.errors import CheckpointError, ChecksumError, ManifestError, MissingFileError, StorageError
from ..storage.jsonio import loads_strict
from ..training.trainer import Trainer
from .inference import InferenceService
from .job import Builder, validate_job
from .limits import (
    ContextCache,
    Limits,
    check_context_upload,
    check_manifest_sizes,
    cipher_bytes,
    dir_bytes,
    quota_error,
    release_memory,
)
from .link import NetworkKeyOwner, ProgressReporter, Superseded

ROLES = ("train", "val")
log = logging.getLogger("encrypted_torch.server")
_DATA_ERRORS = (ChecksumError, MissingFileError, ManifestError)


class Session:
    """A client's session; one connection at a time drives it (``attach``/``detach``).

    ``contexts`` is the server's cache of detached sessions' keys and ``total_bytes`` what all its
    sessions store on disk (for the quota); a session on its own gets a private cache.
    """

    def __init__(self, directory: Path, record: dict[str, Any], limits: Limits, builders: dict[str, Builder],
                 contexts: ContextCache | None = None, total_bytes: Callable[[], int] | None = None):
        self.dir, self.record, self.limits, self.builders = directory, record, limits, builders
        self.id = directory.name
        self.generation = 0
        self.contexts = contexts if contexts is not None else ContextCache(limits.max_loaded_contexts)
        self._total_bytes = total_bytes
        self.disk_bytes = dir_bytes(directory)
        self._lock = threading.Lock()
        self._gen_lock = threading.Lock()
        self._channel: Channel | None = None
        self._ctx: PublicContext | None = None
        self._cipher_bytes: int | None = None
        self._pending: dict[str, tuple[Manifest, set[str]]] = {}
        self._verified: set[str] = set()  # datasets whose every checksum this process has seen match

    @classmethod
    def create(cls, root: Path, limits: Limits, builders: dict[str, Builder], **shared: Any) -> Session:
        """A new session with a random 128-bit id and its own directory (mode 0700)."""
        sid = secrets.token_hex(16)
        directory = root / sid
        directory.mkdir(mode=0o700)
        session = cls(directory, {"id": sid, "created": time.time(), "stage": "upload", "fingerprint": None,
                                  "checkpoint": None, "summary": None}, limits, builders, **shared)
        session._save_record()
        return session

    @classmethod
    def load(cls, directory: Path, limits: Limits, builders: dict[str, Builder], **shared: Any) -> Session:
        """A session from its directory (server restart with --resume); SessionError if session.json
        is missing, unreadable, oversized or malformed (it is read back from disk, so it is checked
        like bytes from a stranger)."""
        path = directory / "session.json"
        try:
            raw = read_bounded(path, 16 << 20, "session record")
        except StorageError as err:
            raise SessionError(str(err)) from None
        try:
            record = loads_strict(raw, "session record")
        except EncTorchError as err:
            raise SessionError(f"{path}: {err}") from None
        if not isinstance(record, dict) or record.get("id") != directory.name or record.get("stage") not in (
                "upload", "training", "done"):
            raise SessionError(f"{directory}: not a session directory")
        fingerprint = record.get("fingerprint", "missing")
        if fingerprint is not None and not (isinstance(fingerprint, str) and len(fingerprint) == 64
                                            and set(fingerprint) <= set("0123456789abcdef")):
            raise SessionError(f"{path}: fingerprint must be null or 64 lowercase hex digits")
        for key in ("checkpoint", "summary"):
            if key not in record or not (record[key] is None or isinstance(record[key], dict)):
                raise SessionError(f"{path}: {key} must be null or an object")
        return cls(directory, record, limits, builders, **shared)

    def _save_record(self) -> None:
        atomic_write_json(self.dir / "session.json", self.record, mode=0o600)

    @property
    def fingerprint(self) -> str | None:
        return self.record["fingerprint"]

    def context(self) -> PublicContext:
        """The session's keys: kept while a connection is attached, parked in the server's cache after."""
        if self._ctx is None:
            if self.fingerprint is None:
                raise SessionError("upload the public context first")
            ctx = self.contexts.take(self.id)
            if ctx is None:
                ctx = PublicContext.from_bytes((self.dir / "public_context.et").read_bytes())
            if ctx.backend_name == "plain" and not self.limits.allow_plain:
                raise SessionError("this session holds a plain-backend (unencrypted) context, which this server "
                                   "refuses; restart it with --allow-plain-backend to serve it")
            self._ctx = ctx
        return self._ctx

    def _unload(self) -> None:
        ctx, self._ctx = self._ctx, None
        if ctx is not None and self.contexts.park(self.id, ctx):
            del ctx
            release_memory()  # the dropped keys can be GBs: give them back now, not at some later collection

    def status(self) -> dict[str, Any]:
        """What the Welcome tells the client: stage, uploaded parts, last checkpoint, summary."""
        return {"stage": self.record["stage"], "fingerprint": self.fingerprint,
                "have": {"public_context": self.fingerprint is not None,
                         **{r: (self.dir / "data" / r / MANIFEST).exists() for r in ROLES},
                         "job": (self.dir / "job.json").exists()},
                "checkpoint": self.record["checkpoint"], "summary": self.record["summary"]}

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
        try:
            self.check_data()
        except BaseException:
            self.detach()
            raise
        return generation

    def detach(self) -> None:
        self._channel = None
        self._pending.clear()
        try:
            self._unload()
        finally:
            self._lock.release()

    def check_data(self) -> None:
        """Verify every stored dataset's checksums once per server process (before the Welcome reports them).

        A damaged dataset is moved aside (``data/<role>.damaged``): the Welcome then reports it
        missing and the client uploads it again; training continues from its checkpoint after.
        """
        if self.record["stage"] == "done":
            return
        for role in ROLES:
            directory = self.dir / "data" / role
            if role in self._verified or not (directory / MANIFEST).exists():
                continue
            try:
                verify_files(directory)
            except _DATA_ERRORS as err:
                self._quarantine(role, err)
                continue
            self._verified.add(role)

    def _quarantine(self, role: str, err: BaseException) -> None:
        directory = self.dir / "data" / role
        damaged = directory.with_name(f"{role}.damaged")
        log.error("session %s: dataset %s is damaged (%s); moved to %s for a re-upload",
                  self.id[:8], role, err, damaged.name)
        shutil.rmtree(damaged, ignore_errors=True)
        os.replace(directory, damaged)
        fsync_dir(damaged.parent)
        self._verified.discard(role)

    def serve(self, channel: Channel, generation: int) -> None:
        """Answer the client's requests until it says Bye."""
        handlers: dict[type[Message], Callable[[Channel, Any, int], None]] = {
            FileBegin: self._file, DatasetBegin: self._dataset_begin, DatasetEnd: self._dataset_end,
            StartTraining: self._start_training, ResumeTraining: self._resume_training,
            FetchModel: self._fetch_model, InferRequest: InferenceService(self).answer,
        }
        while True:
            msg = channel.recv(self.limits.idle_timeout)
            if msg.TYPE == "bye":
                return
            handler = handlers.get(type(msg))
            if handler is None:
                raise ProtocolError(f"a client may not send {msg.TYPE} here")
            handler(channel, msg, generation)

    def _check_quota(self, adding: int) -> None:
        """SessionError if storing ``adding`` more bytes would pass the session's or the server's disk quota."""
        self.disk_bytes = dir_bytes(self.dir)
        lim = self.limits
        if self.disk_bytes + adding > lim.max_session_bytes:
            raise quota_error("this session's disk quota", self.disk_bytes, adding, lim.max_session_bytes,
                              "--max-session-gb")
        total = self._total_bytes() if self._total_bytes is not None else self.disk_bytes
        if total + adding > lim.max_total_bytes:
            raise quota_error("the server's disk quota (all sessions)", total, adding, lim.max_total_bytes,
                              "--max-disk-gb")

    def _file(self, channel: Channel, begin: FileBegin, generation: int) -> None:
        self._check_quota(begin.size)
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
        allow_plain = self.limits.allow_plain
        _receive_file(channel, begin, dest, self.limits,
                      check_first=lambda first: check_context_upload(first, begin.size, allow_plain))
        try:  # bounded by check_context_upload: the keys its parameters can need
            ctx = PublicContext.from_bytes(dest.read_bytes())
            if ctx.backend_name == "plain" and not allow_plain:
                raise SessionError("this server refuses plain-backend contexts; start it with --allow-plain-backend")
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
        damaged = self.dir / "data" / f"{msg.name}.damaged"
        if self.record["stage"] != "upload" and (damaged / MANIFEST).exists():
            if read_manifest(damaged).to_json() != manifest.to_json():  # the checkpoint's batch order relies on it
                raise ManifestError(where, "training has started: a re-upload must carry the same manifest")
        if self._cipher_bytes is None:
            self._cipher_bytes = cipher_bytes(ctx)
        self._check_quota(check_manifest_sizes(manifest, self._cipher_bytes, where))
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
        shutil.rmtree(final.with_name(f"{msg.name}.damaged"), ignore_errors=True)
        ds = open_dataset(final, self.context())
        self._verified.add(msg.name)  # every file's sha256 was checked as it arrived
        channel.send(Ack(f"dataset/{msg.name}", {"batches": len(ds), "samples": ds.num_samples}))

    def _start_training(self, channel: Channel, msg: StartTraining, generation: int) -> None:
        if self.record["stage"] != "upload":
            raise SessionError("training already started in this session; send resume_training")
        if not all((self.dir / "data" / r / MANIFEST).exists() for r in ROLES):
            raise SessionError("upload the training and validation sets first")
        ctx = self.context()
        job = validate_job(msg.job, self.builders)
        init = decode_tensors(msg.model, ctx)
        train = open_dataset(self.dir / "data" / "train", ctx)
        built = self.builders[job["model"]](ctx, job, init, train.unit)  # validates the weights against the job
        kept = getattr(built[2], "labels_stay_with_key_owner", False)
        if kept == train.has_labels:
            raise JobConfigError("the exact-softmax job trains on labels the key owner kept: upload the training set "
                                 "without encrypted labels" if kept else "a training set needs encrypted labels "
                                 "(or a job with softmax 'exact', whose labels stay with the key owner)")
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
        if not all((self.dir / "data" / r / MANIFEST).exists() for r in ROLES):
            raise SessionError("a dataset was damaged and set aside: upload it again, then resume")
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
        try:
            result = trainer.fit(loader, val, job["epochs"])
        except _DATA_ERRORS:
            self._verified.clear()  # damaged since it was checked: the next connection checks again
            raise
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


def _receive_file(channel: Channel, begin: FileBegin, dest: Path, limits: Limits,
                  check_first: Callable[[bytes], object] | None = None) -> FileEntry:
    """Stream FileChunks to ``dest`` (atomically), checking order, size and sha256.

    ``check_first`` sees the first chunk before any file is created, so a refused upload (a secret
    key, an unencrypted context, a size its header cannot need) never touches the disk.
    """
    tmp = tmp_path_for(dest)
    digest, received = hashlib.sha256(), 0
    f = None
    try:
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
            if f is None:
                if check_first is not None:
                    check_first(msg.data)
                f = open(tmp, "wb")  # noqa: SIM115 (closed below, on every path)
            digest.update(msg.data)
            f.write(msg.data)
            received += len(msg.data)
        if received != begin.size:
            raise ProtocolError(f"{begin.target!r} ended after {received} of {begin.size} bytes")
        if digest.hexdigest() != begin.sha256:
            raise ChecksumError(f"upload:{begin.target}", "sha256 of the received bytes differs from the announced")
        if f is None:
            raise ProtocolError(f"{begin.target!r} arrived without a chunk")
        f.flush()
        os.fsync(f.fileno())
        f.close()
        os.replace(tmp, dest)
    finally:
        if f is not None:
            f.close()
            tmp.unlink(missing_ok=True)
    fsync_dir(dest.parent)
    return FileEntry(dest.name, received, begin.sha256)
