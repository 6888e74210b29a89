"""Encrypted inference with the model a server trained: ``python -m encrypted_torch.client infer``.

The key owner encrypts new samples' features under its own key, the server applies the trained
encrypted model it kept (``server.inference``) and sends encrypted logits back; only the key owner
decrypts them, so the server learns neither inputs nor outputs (only the row count). The key
owner answers nothing in this exchange: it only asks.

>>> session = RemoteSession(url, token, owner, session_id=sid); session.connect()   # doctest: +SKIP
>>> classes = EncryptedInference(session, job, init_model).predict(x)                 # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from websockets.exceptions import WebSocketException

from ..ckks.secret import SecretContext
from ..errors import DepthError, EncTorchError, ShapeError
from ..hetal.prepare import normalise_with
from ..protocol.ciphers import encode_payloads
from ..protocol.errors import ConnectionLostError, ProtocolError, SessionError
from ..protocol.messages import MAX_INFER_ROWS, InferReply, InferRequest
from ..storage.atomic import atomic_write_json
from ..storage.checkpoint import load_checkpoint
from ..storage.jsonio import loads_strict
from ..tensor.enctensor import EncTensor
from ..tensor.layout import BlockLayout
from ..training.early_stopping import EarlyStopping
from ..training.inference_plan import input_layout, input_level, model_unit
from ..training.job import BUILDERS, Builder, validate_job
from .key_owner import KeyOwner
from .remote import RemoteSession, token_from_env_or_file

DEFAULT_BATCH = 256


class FeatureFileError(EncTorchError, ValueError):
    """A features file that cannot be read as a (samples × features) array; the message names the fix."""


@dataclass
class InferenceStats:
    """What encrypted inference cost, summed over batches (bytes as sent on the wire, sealed)."""

    batches: int = 0
    rows: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    encrypt_seconds: float = 0.0
    server_seconds: float = 0.0  # send → reply: the server's product plus both transfers
    decrypt_seconds: float = 0.0


class EncryptedInference:
    """Logits of new samples from a finished remote session's encrypted model, computed by the server.

    ``job``: the job the session trained; ``weights``: its parameters' layouts (or the initial
    encrypted model itself), from which the key owner computes, with its own copy of the job's
    builder, the level to encrypt at (``training.inference_plan``; ``level`` may raise it, e.g. to
    the top for a comparison). ``batch_size``: rows per request (the server refuses more than its
    ``--max-infer-rows``). Features travel as seeded secret-key encryptions where the backend has
    them (half the bytes; ``seeded=False``: full ones). A dropped connection is reopened once per
    batch and the batch sent again.
    """

    def __init__(self, session: RemoteSession, job: dict[str, Any], weights: dict[str, EncTensor | BlockLayout], *,
                 batch_size: int = DEFAULT_BATCH, builders: dict[str, Builder] | None = None,
                 level: int | None = None, seeded: bool = True) -> None:
        if not 1 <= batch_size <= MAX_INFER_ROWS:
            raise ShapeError(f"batch_size must be in [1, {MAX_INFER_ROWS}], got {batch_size}")
        builders = BUILDERS if builders is None else builders
        self.job = validate_job(job, builders)
        layouts = {k: v.layout if isinstance(v, EncTensor) else v for k, v in weights.items()}
        self.session, self.batch_size = session, batch_size
        self.unit = model_unit(layouts)
        planned, top = input_level(session.ctx, self.job, layouts, builders), session.ctx.top_level
        if level is not None and not planned <= level <= top:
            raise DepthError("encrypted inference's input", planned, level, f"choose a level in [{planned}, {top}]")
        self.level, self.seeded = planned if level is None else level, seeded
        self.in_features, self.num_classes = int(self.job["in_features"]), int(self.job["out_features"])
        self.stats = InferenceStats()
        self._ids = itertools.count()

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Float64 logits (samples × classes) of ``x`` (samples × in_features), batch by batch."""
        x = torch.as_tensor(x)
        if x.ndim != 2 or x.shape[0] == 0:
            raise ShapeError(f"features must be (samples, features) with samples > 0, got {tuple(x.shape)}")
        if x.shape[1] != self.in_features:
            raise ShapeError(f"features have {x.shape[1]} columns; the model was trained on {self.in_features}")
        if not torch.isfinite(x).all():
            raise ShapeError("features hold NaN or inf; clean them before inference")
        return torch.cat([self._batch(x[i: i + self.batch_size]) for i in range(0, x.shape[0], self.batch_size)])

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Class indices (argmax of the decrypted logits)."""
        return self.logits(x).argmax(dim=1)

    def _batch(self, xb: torch.Tensor) -> torch.Tensor:
        owner, st = self.session.key_owner, self.stats
        rows = xb.shape[0]
        t0 = time.perf_counter()
        packed = input_layout(rows, self.in_features, self.unit).pack(xb.double().numpy())
        records, payloads = owner.secret.encrypt_payloads(
            [packed[i, j] for i in range(packed.shape[0]) for j in range(packed.shape[1])], self.level, self.seeded)
        request = InferRequest(next(self._ids), rows, encode_payloads(owner.fingerprint, records, payloads))
        t1 = time.perf_counter()
        reply = self._ask(request)
        t2 = time.perf_counter()
        if reply.request_id != request.request_id or reply.rows != rows:
            raise ProtocolError(f"infer_reply {reply.request_id} of {reply.rows} rows for request "
                                f"{request.request_id} of {rows}")
        out = EncTensor.from_bytes(reply.logits, owner.public_context)
        if tuple(out.shape) != (rows, self.num_classes):
            raise ProtocolError(f"logits of shape {tuple(out.shape)} for {rows} rows and {self.num_classes} classes")
        logits = owner.decrypt(out)
        st.batches, st.rows = st.batches + 1, st.rows + rows
        st.encrypt_seconds += t1 - t0
        st.server_seconds += t2 - t1
        st.decrypt_seconds += time.perf_counter() - t2
        return logits

    def _ask(self, request: InferRequest) -> InferReply:
        try:
            return self._send(request)
        except ConnectionLostError:  # e.g. the server closed an idle connection: reopen it once
            self.session.connect()
            return self._send(request)

    def _send(self, request: InferRequest) -> InferReply:
        channel = self.session.channel
        sent, received = channel.bytes_sent, channel.bytes_received
        try:
            channel.send(request)
            return channel.expect(InferReply, self.session.timeout)
        finally:
            self.stats.bytes_sent += channel.bytes_sent - sent
            self.stats.bytes_received += channel.bytes_received - received


def read_features(path: Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(x, y or None) from a .npz (arrays ``x``, optional ``y``), a .pt (a tensor, or a dict with ``x``,
    optional ``y``) or a .csv of numbers (an optional header row; a column named y or label: labels)."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                if "x" not in data.files:
                    raise FeatureFileError(f"{path}: no array named 'x' (it has {data.files[:8]}); save the "
                                           "features with np.savez(path, x=features)")
                x, y = data["x"], (data["y"] if "y" in data.files else None)
        elif suffix == ".pt":
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(obj, dict):
                if "x" not in obj:
                    raise FeatureFileError(f"{path}: a dict without 'x'; save torch.save({{'x': features}}, path)")
                x, y = obj["x"], obj.get("y")
            else:
                x, y = obj, None
        elif suffix == ".csv":
            x, y = _read_csv(path)
        else:
            raise FeatureFileError(f"{path}: unknown features file type {suffix!r}; use .npz, .pt or .csv")
    except FeatureFileError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        raise FeatureFileError(f"{path}: cannot read features ({type(err).__name__}: {str(err)[:200]})") from None
    x = torch.as_tensor(np.asarray(x, dtype=np.float64))
    if x.ndim != 2 or x.shape[0] == 0:
        raise FeatureFileError(f"{path}: features must be a non-empty (samples, features) array, got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise FeatureFileError(f"{path}: features hold NaN or inf")
    labels = None if y is None else torch.as_tensor(np.asarray(y)).long().reshape(-1)
    if labels is not None and labels.shape[0] != x.shape[0]:
        raise FeatureFileError(f"{path}: {labels.shape[0]} labels for {x.shape[0]} samples")
    return x, labels


def _read_csv(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    if not lines:
        raise FeatureFileError(f"{path}: empty CSV")
    first = [c.strip() for c in lines[0].split(",")]
    header = None
    try:
        [float(c) for c in first]
    except ValueError:
        header, lines = [c.lower() for c in first], lines[1:]
    try:
        table = np.array([[float(c) for c in ln.split(",")] for ln in lines], dtype=np.float64)
    except ValueError as err:
        raise FeatureFileError(f"{path}: every row after the header must be numbers ({err})") from None
    if table.ndim != 2:
        raise FeatureFileError(f"{path}: rows of different lengths")
    label_col = next((header.index(n) for n in ("y", "label") if header and n in header), None)
    if label_col is None:
        return table, None
    return np.delete(table, label_col, axis=1), table[:, label_col]


def main(argv: list[str]) -> int:
    """``python -m encrypted_torch.client infer --server URL --workdir DIR FILES...``; 2 on an error."""
    ap = argparse.ArgumentParser(prog="python -m encrypted_torch.client infer", description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", required=True, help="ws(s)://HOST:PORT of the server that trained the model")
    ap.add_argument("--workdir", type=Path, required=True, help="the training client's workdir (keys, session)")
    ap.add_argument("--token-file", type=Path, help="file holding the shared token (else $ENCRYPTED_TORCH_TOKEN)")
    ap.add_argument("--cafile", type=Path, help="CA certificate(s) (PEM) that sign a wss:// server's certificate")
    ap.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help="rows per encrypted request")
    ap.add_argument("--out", type=Path, help="write the predictions (and logits) here as JSON")
    ap.add_argument("--normalised", action="store_true",
                    help="the features are already normalised as training saw them (e.g. the workdir's test.npz); "
                         "by default they are normalised with the training statistics in the workdir's inference.pt")
    ap.add_argument("files", nargs="+", type=Path,
                    help="feature files (.npz/.pt/.csv with an x array, optional y labels) of the backbone the "
                         "model was trained on")
    args = ap.parse_args(argv)
    old_umask = os.umask(0o077)  # predictions are the key owner's secrets too
    try:
        return _run(args)
    except EncTorchError as err:
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    except (OSError, WebSocketException) as err:
        print(f"error: cannot reach {args.server}: {err}", file=sys.stderr)
        return 2
    finally:
        os.umask(old_umask)


def open_trained_session(server: str, workdir: Path, token: bytes, cafile: Path | None = None
                         ) -> tuple[RemoteSession, dict[str, Any], dict[str, EncTensor]]:
    """The finished session a training client's workdir names, connected: (session, client record,
    the initial encrypted model, whose layouts the trained one has)."""
    record_path = workdir / "client.json"
    if not record_path.exists() or not (workdir / "session_state.et").exists():
        raise SessionError(f"{workdir} is not a training client's workdir (no client.json / session_state.et); "
                           "pass the --workdir of `python -m encrypted_torch.client` that trained the model")
    record = loads_strict(record_path.read_bytes(), "client record")
    secret = SecretContext.from_bytes((workdir / "secret_context.et").read_bytes())
    init = load_checkpoint(workdir / "init_model.et", secret.public())["model"]
    owner = KeyOwner(secret, EarlyStopping(patience=int(record["config"].get("patience", 3))))
    session = RemoteSession(server, token, owner, state_path=workdir / "session_state.et", cafile=cafile)
    if session.session_id is None:
        raise SessionError(f"{workdir} has no session yet: train first")
    status = session.connect()
    if status.get("stage") != "done":
        session.close()
        raise SessionError(f"session {session.session_id[:8]}… is at stage {status.get('stage')!r}: "
                           "finish training (run the training command again) before inference")
    return session, record, init


def _inference_record(workdir: Path) -> dict[str, Any] | None:
    """The workdir's inference.pt (classes, backbone, training normalisation), if training wrote one."""
    path = workdir / "inference.pt"
    if not path.exists():
        return None
    try:
        meta = torch.load(path, map_location="cpu", weights_only=True)
        norm = meta["normalisation"]
        if not (isinstance(norm["mean"], torch.Tensor) and isinstance(norm["std"], torch.Tensor)):
            raise TypeError("mean and std must be tensors")
    except Exception as err:  # a damaged or foreign file: torch.load raises many kinds
        raise FeatureFileError(f"{path} is not the training client's inference record ({type(err).__name__}); "
                               "pass --normalised features instead") from None
    return meta


def _run(args: argparse.Namespace) -> int:
    token = token_from_env_or_file(args.token_file)
    inputs = [(path, *read_features(path)) for path in args.files]
    session, record, init = open_trained_session(args.server, args.workdir, token, args.cafile)
    d = int(record["in_features"])
    for path, x, _ in inputs:
        if x.shape[1] != d:
            session.close()
            raise ShapeError(f"{path}: {x.shape[1]} features; the model was trained on {d}")
    meta = _inference_record(args.workdir)
    if not args.normalised:
        if meta is None:
            session.close()
            raise SessionError(f"{args.workdir} keeps no training normalisation (inference.pt): pass features "
                               "normalised as training saw them, with --normalised")
        norm = meta["normalisation"]
        inputs = [(p, normalise_with(x, norm["mean"], norm["std"]), y) for p, x, y in inputs]
    classes = None if meta is None else meta.get("classes")
    inference = EncryptedInference(session, record["job"], init, batch_size=args.batch_size)
    results = []
    try:
        for path, x, y in inputs:
            logits = inference.logits(x)
            pred = logits.argmax(dim=1)
            entry: dict[str, Any] = {"file": str(path), "samples": x.shape[0], "predictions": pred.tolist()}
            if isinstance(classes, list) and len(classes) == logits.shape[1]:
                entry["classes"] = [classes[i] for i in entry["predictions"]]
            if y is not None:
                entry["accuracy"] = float((pred == y).double().mean())
            print(json.dumps({k: v for k, v in entry.items() if k not in ("predictions", "classes")}), flush=True)
            entry["logits"] = logits.tolist()
            results.append(entry)
    finally:
        session.close()
    stats = asdict(inference.stats)
    print(json.dumps({"session_id": session.session_id, **{k: round(v, 4) if isinstance(v, float) else v
                                                           for k, v in stats.items()}}), flush=True)
    if args.out:
        atomic_write_json(args.out, {"session_id": session.session_id, "results": results, "stats": stats})
    return 0
