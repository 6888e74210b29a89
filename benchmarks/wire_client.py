"""The key owner's side of the wire benchmark: one prepared job, one training session per link.

    python -m benchmarks.wire_client --direct ws://127.0.0.1:P --session loopback=ws://127.0.0.1:P \
        --session 100mbit:20ms=ws://127.0.0.1:R --report out.json [--dataset synthetic --shape 1024,769,10]

Mirrors ``python -m encrypted_torch.client`` through the library API (``prepare_hetal``,
``RemoteSession``), with two differences a benchmark needs: the data may be synthetic (random
unit-norm rows at HETAL's (batch, d+1, classes) shape), and the keys and encrypted data are made
once and trained on in one session per link. Every message the client sends or receives is logged
(time, direction, type, wire bytes as ``protocol.Channel`` counts them, ciphertext levels), and the
log is cut into steps at the server's Progress messages and into epoch ends at the verdicts. Each
session uploads over ``--direct`` (loopback) and then trains over its own URL: the upload's bytes
are reported, and its time over a link is bytes / rate (``--upload-over-link`` sends it there).
The token comes from $ENCRYPTED_TORCH_TOKEN, as for the CLI.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import struct
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from encrypted_torch.ckks import counters
from encrypted_torch.client.key_owner import KeyOwner
from encrypted_torch.client.remote import RemoteSession, token_from_env_or_file
from encrypted_torch.datasets.splits import FeatureSplits
from encrypted_torch.hetal.config import HetalConfig, config_for
from encrypted_torch.hetal.plaintext import accuracy
from encrypted_torch.hetal.prepare import decrypt_linear, prepare_hetal
from encrypted_torch.protocol.errors import ProtocolError
from encrypted_torch.storage.dataset import write_dataset
from encrypted_torch.training.early_stopping import EarlyStopping

_MAGIC = b"ETORCH"
# the framings that carry ciphertext records in their "meta" section: protocol cipher lists, EncTensors
CIPHER_KINDS = {b"cipher_list": "ciphers", b"enc_tensor": "blocks"}
# what the server sends that is not a request for the key owner
NOT_REQUESTS = {"progress", "training_done", "ack", "welcome", "server_hello", "model_state"}


def synthetic_splits(n_train: int, n_val: int, n_test: int, features: int, classes: int,
                     seed: int = 0) -> FeatureSplits:
    """Random Gaussian features (unit-norm after ``normalise``) with random labels: HETAL's shapes, no download."""
    g = torch.Generator().manual_seed(seed)

    def part(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.randn(n, features, generator=g, dtype=torch.float32),
                torch.randint(0, classes, (n,), generator=g, dtype=torch.int64))

    return FeatureSplits(part(n_train), part(n_val), part(n_test), [str(i) for i in range(classes)], "synthetic")


def cipher_levels(data: Any) -> list[int] | None:
    """The levels recorded in a cipher list or an EncTensor's bytes, read from the header only (no
    checksum, no SEAL): measuring must not add the receiver's decoding work twice. None if neither."""
    if not isinstance(data, (bytes, bytearray)) or not data.startswith(_MAGIC):
        return None
    try:
        pos = len(_MAGIC) + 1
        (n,) = struct.unpack_from("<H", data, pos)
        records = CIPHER_KINDS.get(bytes(data[pos + 2: pos + 2 + n]))
        if records is None:
            return None
        pos += 2 + n + 4
        (n,) = struct.unpack_from("<H", data, pos)
        name = bytes(data[pos + 2: pos + 2 + n])
        pos += 2 + n
        (length,) = struct.unpack_from("<Q", data, pos)
        if name != b"meta" or length > 1 << 24:
            return None
        meta = json.loads(bytes(data[pos + 8: pos + 8 + length]))
        return [int(rec[0]) for rec in meta[records]]
    except (struct.error, ValueError, KeyError, TypeError, IndexError):
        return None


def message_levels(msg: Any) -> list[int]:
    """Levels of every ciphertext list a message carries (in any bytes field, list or dict of bytes)."""
    out: list[int] = []
    if not dataclasses.is_dataclass(msg):
        return out
    for f in dataclasses.fields(msg):
        value = getattr(msg, f.name)
        items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else [value]
        for item in items:
            levels = cipher_levels(item)
            if levels:
                out.extend(levels)
    return out


class Recorder:
    """A log of every message of a session: (seconds, direction, type, wire bytes, levels, details)."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.events: list[dict[str, Any]] = []
        self.ops: counters.OpCounts | None = None
        self.lock = threading.Lock()
        self._target = ""

    def add(self, direction: str, msg: Any, nbytes: int) -> None:
        kind = getattr(msg, "TYPE", type(msg).__name__)
        event: dict[str, Any] = {"t": time.perf_counter() - self.t0, "dir": direction, "type": kind, "bytes": nbytes}
        if kind == "file_begin":
            self._target = msg.target
        if kind in ("file_begin", "file_chunk", "file_end"):
            event["target"] = self._target
        elif kind == "dataset_begin":
            event["target"] = f"dataset/{msg.name}/manifest"
        elif kind == "progress":
            event["info"] = dict(msg.info)
            if self.ops is not None:
                event["refreshes_by_level"] = {str(lv): n for (op, lv), n in self.ops.by_level.items()
                                               if op == "refreshes"}
        else:
            levels = message_levels(msg)
            if levels:
                event["levels"] = levels
        with self.lock:
            self.events.append(event)


class RecordingChannel:
    """A ``protocol.Channel`` that logs each message into a Recorder (everything else passes through)."""

    def __init__(self, inner: Any, recorder: Recorder) -> None:
        self.inner, self.recorder = inner, recorder

    def send(self, msg: Any) -> None:
        before = self.inner.bytes_sent
        self.inner.send(msg)
        self.recorder.add("c2s", msg, self.inner.bytes_sent - before)

    def recv(self, timeout: float | None = None) -> Any:
        before = self.inner.bytes_received
        msg = self.inner.recv(timeout)
        self.recorder.add("s2c", msg, self.inner.bytes_received - before)
        return msg

    def expect(self, cls: type, timeout: float | None = None) -> Any:
        msg = self.recv(timeout)
        if not isinstance(msg, cls):
            raise ProtocolError(f"expected {cls.TYPE}, got {msg.TYPE}")
        return msg

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class RecordingSession(RemoteSession):
    """RemoteSession whose channel is a RecordingChannel (also after a reconnect)."""

    recorder: Recorder

    def connect(self) -> dict[str, Any]:
        status = super().connect()
        self._channel = RecordingChannel(self._channel, self.recorder)  # type: ignore[assignment]
        return status


def _segments(events: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Cut the training part of the log into ("step", events) and ("epoch_end", events) segments:
    a step ends at the server's Progress, an epoch end at the key owner's verdict."""
    start = next((i for i, e in enumerate(events) if e["type"] in ("start_training", "resume_training")), None)
    if start is None:
        return []
    out, current = [], []
    for e in events[start + 1:]:
        current.append(e)
        if e["type"] == "progress":
            out.append(("step", current))
            current = []
        elif e["type"] == "epoch_verdict":
            out.append(("epoch_end", current))
            current = []
    if current:
        out.append(("tail", current))
    return out


def _summarise(kind: str, seg: list[dict[str, Any]], seg_start: float, prev_refreshes: dict[str, int]) -> dict:
    c2s = sum(e["bytes"] for e in seg if e["dir"] == "c2s")
    s2c = sum(e["bytes"] for e in seg if e["dir"] == "s2c")
    requests = [e for e in seg if e["dir"] == "s2c" and e["type"] not in NOT_REQUESTS]
    sent_levels = Counter(lv for e in requests for lv in e.get("levels", []))
    reply_levels = Counter(lv for e in seg if e["dir"] == "c2s" for lv in e.get("levels", []))
    key_owner = 0.0  # the client answers in order: a request's reply is the next message it sends
    for i, e in enumerate(seg):
        if e["dir"] == "s2c" and e["type"] not in NOT_REQUESTS:
            reply = next((r for r in seg[i + 1:] if r["dir"] == "c2s"), None)
            if reply is not None:
                key_owner += reply["t"] - e["t"]
    out: dict[str, Any] = {"kind": kind, "key_owner_seconds": round(key_owner, 4), "c2s_bytes": c2s,
                           "s2c_bytes": s2c, "round_trips": len(requests),
                           "requests": dict(Counter(e["type"] for e in requests)),
                           "ciphers_to_client": sum(sent_levels.values()),
                           "levels_to_client": {str(k): v for k, v in sorted(sent_levels.items())},
                           "ciphers_to_server": sum(reply_levels.values()),
                           "levels_to_server": {str(k): v for k, v in sorted(reply_levels.items())},
                           "client_seconds": round(seg[-1]["t"] - seg_start, 4)}
    last = seg[-1]
    if kind == "step":
        out["server_seconds"] = last["info"].get("seconds")
        out["server_refreshes"] = last["info"].get("refreshes")
        now = last.get("refreshes_by_level", {})
        out["refreshes_by_level"] = {k: v - prev_refreshes.get(k, 0) for k, v in now.items()
                                     if v - prev_refreshes.get(k, 0)}
    return out


def analyse(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-step and per-epoch-end traffic, the upload's bytes by target, and the medians and means over
    steps 2.. (the first step of a session also builds the server's model; it is reported, not averaged)."""
    upload: Counter = Counter()
    upload_time = [None, None]
    for e in events:
        if e["type"] in ("start_training", "resume_training"):
            break
        if "target" in e and e["dir"] == "c2s":
            kind = "public_context" if e["target"] == "public_context" else e["target"].split("/")[1]
            upload[kind] += e["bytes"]
            upload_time[0] = e["t"] if upload_time[0] is None else upload_time[0]
            upload_time[1] = e["t"]
    steps, epoch_ends = [], []
    seg_start = next((e["t"] for e in events if e["type"] in ("start_training", "resume_training")), 0.0)
    prev: dict[str, int] = {}
    for kind, seg in _segments(events):
        row = _summarise(kind, seg, seg_start, prev)
        seg_start = seg[-1]["t"]
        if kind == "step":
            prev = seg[-1].get("refreshes_by_level", prev)
            steps.append(row)
        elif kind == "epoch_end":
            epoch_ends.append(row)
    measured = steps[1:] or steps
    keys = ("c2s_bytes", "s2c_bytes", "round_trips", "ciphers_to_client", "ciphers_to_server",
            "server_seconds", "client_seconds", "key_owner_seconds")
    per_step = {k: statistics.median(r[k] for r in measured) for k in keys if measured and r_has(measured, k)}
    # refreshes differ from step to step (a momentum buffer's every few steps): the mean is what an epoch costs
    mean_step = {k: statistics.fmean(r[k] for r in measured) for k in keys if measured and r_has(measured, k)}
    if measured:
        # the levels of a step like the median one (the last such), so that they add up to its count
        like = [r for r in measured if r.get("ciphers_to_client") == per_step.get("ciphers_to_client")] or measured
        per_step["levels_to_client"] = like[-1]["levels_to_client"]
        per_step["levels_to_server"] = like[-1]["levels_to_server"]
        per_step["requests"] = like[-1]["requests"]
        per_step["server_seconds_all"] = [r.get("server_seconds") for r in steps]
    return {"upload_bytes": dict(upload), "upload_seconds": (upload_time[1] - upload_time[0]) if upload_time[0]
            is not None else None, "steps": steps, "epoch_ends": epoch_ends, "per_step": per_step,
            "mean_step": mean_step}


def r_has(rows: list[dict[str, Any]], key: str) -> bool:
    return all(r.get(key) is not None for r in rows)


def _config(args: argparse.Namespace) -> tuple[HetalConfig, Any]:
    if args.dataset == "synthetic":
        batch, width, classes = args.shape or (1024, 769, 10)
        cfg = HetalConfig(dataset="synthetic", preset=args.preset, batch_size=batch, lr=1.0, epochs=args.epochs,
                          n_train=args.n_train or 2 * batch, n_val=args.n_val, n_test=args.n_val, seed=args.seed,
                          softmax=args.softmax)
        splits = synthetic_splits(cfg.n_train, args.n_val, args.n_val, width - 1, classes, args.seed)
        return cfg, splits
    cfg = config_for(args.dataset, preset=args.preset, batch_size=args.shape[0] if args.shape else None,
                     epochs=args.epochs, n_train=args.n_train, n_val=args.n_val, seed=args.seed,
                     softmax=args.softmax)
    return cfg, None


def run(args: argparse.Namespace) -> dict[str, Any]:
    token = token_from_env_or_file(None)
    cfg, splits = _config(args)
    t0 = time.perf_counter()
    prep = prepare_hetal(cfg, splits, for_upload=True)  # as the client CLI: seeded unless cut
    prepare_seconds = time.perf_counter() - t0
    work = Path(tempfile.mkdtemp(prefix="et-wire-client-", dir=args.workdir))
    write_dataset(prep.train, work / "train")
    write_dataset(prep.val, work / "val")
    base_state = prep.key_owner.state_dict()
    base_state.pop("policy", None)
    job = {**prep.job(checkpoint_every=1), **dict(args.job_option)}
    public_bytes = len(prep.secret.public_bytes())
    report: dict[str, Any] = {
        "config": cfg.as_dict(), "job": job, "cuts_env": os.environ.get("ENCRYPTED_TORCH_WIRE_CUTS"),
        "shape": [cfg.batch_size, prep.in_features + 1, prep.num_classes], "unit": list(prep.train.unit),
        "rows": {"train": prep.train.num_samples, "val": prep.val.num_samples},
        "prepare_seconds": round(prepare_seconds, 2), "public_context_bytes": public_bytes, "sessions": {}}
    xte, yte = prep.test
    for name, url in args.session:
        owner = KeyOwner(prep.secret, EarlyStopping(patience=cfg.patience))
        owner.load_state_dict(base_state)
        recorder = Recorder()
        first_url = url if args.upload_over_link else args.direct
        session = RecordingSession(first_url, token, owner, on_progress=None)
        session.recorder = recorder
        t_start = time.perf_counter()
        session.connect()
        session.upload(work / "train", work / "val")
        if first_url != url:
            session.close()
            session.url = url
            session.connect()
        with counters.count_ops() as ops:
            recorder.ops = ops
            t_train = time.perf_counter()
            summary = session.train(job, prep.init)
            train_seconds = time.perf_counter() - t_train
        model = decrypt_linear(session.fetch_model(), prep.secret, prep.in_features)
        session.close()
        result = analyse(recorder.events)
        result.update(server_summary=summary, train_seconds=round(train_seconds, 3),
                      session_seconds=round(time.perf_counter() - t_start, 3), upload_url=first_url,
                      test_accuracy=accuracy(model, xte, yte), history=owner.history)
        if args.keep_events:
            result["events"] = recorder.events
        report["sessions"][name] = result
        ps = result["per_step"]
        print(f"{name}: step {ps.get('server_seconds')} s, {ps.get('c2s_bytes', 0) / 1e6:.2f} MB up, "
              f"{ps.get('s2c_bytes', 0) / 1e6:.2f} MB down, {ps.get('round_trips')} round trips", flush=True)
    rows = report["rows"]["train"] + report["rows"]["val"]
    first = next(iter(report["sessions"].values()), None)
    if first is not None:
        up = first["upload_bytes"]
        report["upload"] = {"public_context_wire_bytes": up.get("public_context", 0),
                            "train_bytes_per_row": up.get("train", 0) / max(1, report["rows"]["train"]),
                            "val_bytes_per_row": up.get("val", 0) / max(1, report["rows"]["val"]),
                            "dataset_bytes_per_row": (up.get("train", 0) + up.get("val", 0)) / max(1, rows)}
    return report


def _shape(text: str) -> tuple[int, int, int]:
    parts = tuple(int(p) for p in text.split(","))
    if len(parts) != 3 or min(parts) < 2:
        raise argparse.ArgumentTypeError("--shape is BATCH,FEATURES_WITH_BIAS,CLASSES, e.g. 1024,769,10")
    return parts  # type: ignore[return-value]


def _named_url(text: str) -> tuple[str, str]:
    name, sep, url = text.partition("=")
    if not sep or not url.startswith(("ws://", "wss://")):
        raise argparse.ArgumentTypeError("--session is NAME=ws://HOST:PORT")
    return name, url


def _job_option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError("--job-option is KEY=JSON_VALUE")
    return key, json.loads(value)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.wire_client", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--direct", required=True, help="ws://HOST:PORT of the server itself (uploads go here)")
    ap.add_argument("--session", type=_named_url, action="append", required=True,
                    help="NAME=URL: train once over URL (repeat: one session per link)")
    ap.add_argument("--report", type=Path, required=True)
    ap.add_argument("--workdir", type=Path, help="parent of the client's scratch directory")
    ap.add_argument("--dataset", choices=["synthetic", "digits", "mnist", "snips"], default="synthetic")
    ap.add_argument("--shape", type=_shape, help="BATCH,FEATURES+1,CLASSES (synthetic default 1024,769,10; "
                    "a real dataset takes only the batch size)")
    ap.add_argument("--n-train", type=int, help="training rows (synthetic default: two batches)")
    ap.add_argument("--n-val", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--softmax", default="default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--job-option", type=_job_option, action="append", default=[],
                    help="KEY=JSON added to the job (e.g. an opt-in protocol)")
    ap.add_argument("--upload-over-link", action="store_true", help="upload over each session's link too")
    ap.add_argument("--keep-events", action="store_true", help="keep the full message log in the report")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report = run(args)
    args.report.write_text(json.dumps(report, indent=1, default=_json_default))
    return 0


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, torch.Tensor):
        return o.tolist()
    return str(o)


if __name__ == "__main__":
    sys.exit(main())
