"""``--dry-run``: what a HETAL run will cost, before anything is encrypted.

The training code runs dry on a backend that tracks only levels and counts (``ckks.null_backend``, as
``training.refresh_plan`` and ``training.unit_choice`` do): a few steps and one validation pass give the
op counts by level and the refreshes exactly. They are priced with the cost model of
``training.unit_choice`` (docs/performance.md), calibrated on this machine by timing a few rotations,
products and encryptions on real keys of the preset; bytes come from serialising real ciphertexts
and key sets. Time and memory are models (docs/performance.md: measured CPU is 1.3–1.5× the op-count
floor, wall 0.6–1.0× CPU on 2 cores); the run's report states how far they were from the measurement.
"""

from __future__ import annotations

import contextvars
import math
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..ckks import counters
from ..ckks.null_backend import null_context
from ..ckks.params import CKKSParams, get_params
from ..data.dataset import EncBatch, KeptLabels
from ..nn.linear import Linear
from ..parallel import use_workers
from ..protocol.wire import wire_cuts
from ..tensor.enctensor import EncTensor, encrypt
from ..tensor.layout import BlockLayout
from ..training.job import make_criterion, make_optimizer
from ..training.key_owner_link import EpochVerdict
from ..training.trainer import Trainer
from ..training.unit_choice import choose_unit, op_cost_ms
from .config import HetalConfig

OVERHEAD = 1.4  # measured CPU / op-count floor, 1.29–1.50 (benchmarks/results/scaling.md)
PARALLEL_SPEEDUP = 1.6  # CPU / wall of a step on 2 worker processes, 1.4–1.8 (same table)
EXTRACT_SECONDS = {"images": 0.02, "text": 0.003, "features": 0.0}  # per sample, 2 cores, no cache
BACKBONE_MB = {"images": 120.0, "text": 250.0, "features": 0.0}
BACKBONE_LOAD_SECONDS = {"images": 3.0, "text": 8.0, "features": 0.0}


@dataclass
class Calibration:
    """This machine's speed and the preset's sizes, measured on real keys (a few seconds at 'fast')."""

    scale: float  # measured / modelled ms of rotations and products
    encrypt_ms: float
    cipher_bytes: int  # a fresh top-level ciphertext, serialised
    key_bytes: int  # one more rotation key in the serialised public context
    base_context_bytes: int  # public context with one rotation key
    keygen_ms_per_key: float  # per key-switching key (public key, relinearisation and rotation keys alike)
    serialise_mb_s: float  # public context to bytes
    load_mb_s: float  # bytes to a public context (the server; the key owner's public() too)
    hash_mb_s: float  # sha256, which every upload and download runs
    seconds: float  # this calibration's own time


@dataclass
class Estimate:
    """A run's plan: counts exact (dry run), time and memory modelled, bytes from real serialisations."""

    preset: str
    unit: tuple[int, int]
    batch_size: int
    steps_per_epoch: int
    epochs: int
    rotation_keys: int
    ops_per_step: dict[str, float]
    refreshes_per_step: float
    refreshes_per_validation: int
    step_seconds: float
    validation_seconds: float
    extract_seconds: float
    setup_seconds: float
    total_seconds: float
    public_context_bytes: int
    train_bytes: int
    val_bytes: int
    bytes_per_step: int
    client_peak_mb: float
    server_peak_mb: float
    calibration: dict[str, Any] = field(default_factory=dict)

    @property
    def upload_bytes(self) -> int:
        return self.public_context_bytes + self.train_bytes + self.val_bytes

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "upload_bytes": self.upload_bytes}

    def render(self) -> str:
        """The plan as a person reads it."""
        mib = 1 << 20
        rows = [
            ("unit (block shape)", f"{self.unit}, {self.rotation_keys} rotation keys, preset {self.preset!r}"),
            ("steps", f"{self.steps_per_epoch} per epoch × at most {self.epochs} epochs (batch {self.batch_size})"),
            ("time per step", f"{self.step_seconds:.2f} s"),
            ("validation per epoch", f"{self.validation_seconds:.2f} s"),
            ("setup", f"{self.setup_seconds:.1f} s (features {self.extract_seconds:.1f} s if not cached, keys, "
                      "encryption)"),
            ("total (all epochs)", f"{self.total_seconds / 60:.1f} min; early stopping usually ends sooner"),
            ("upload", f"{self.upload_bytes / mib:.1f} MiB (keys {self.public_context_bytes / mib:.1f}, train "
                       f"{self.train_bytes / mib:.1f}, validation {self.val_bytes / mib:.1f})"),
            ("per step", f"{self.bytes_per_step / mib:.1f} MiB both ways, {self.refreshes_per_step:.1f} refreshes"),
            ("refreshes per validation", f"{self.refreshes_per_validation}"),
            ("peak memory", f"client {self.client_peak_mb:.0f} MB, server {self.server_peak_mb:.0f} MB"),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


_CALIBRATIONS: dict[str, Calibration] = {}


def calibrate(preset: str, backend: str = "seal") -> Calibration:
    """Time rotations, products and encryptions on real keys of ``preset``; serialised sizes (cached)."""
    key = f"{preset}/{backend}"
    if key in _CALIBRATIONS:
        return _CALIBRATIONS[key]
    import hashlib

    from ..ckks import cipher_codec
    from ..ckks.public import PublicContext
    from ..ckks.secret import SecretContext

    params = get_params(preset)
    t0 = time.perf_counter()
    one = SecretContext.create(preset, rotations=[1], backend=backend)
    t1 = time.perf_counter()
    public_one = one.public_bytes()
    t2 = time.perf_counter()
    two = SecretContext.create(preset, rotations=[1, 2], backend=backend)
    t3 = time.perf_counter()
    PublicContext.from_bytes(public_one)
    t4 = time.perf_counter()
    hashlib.sha256(public_one).hexdigest()
    t5 = time.perf_counter()
    b1, b2 = len(public_one), len(two.public_bytes())
    ctx = one.public()
    ev = ctx.evaluator
    c = ev.encrypt([0.5] * params.slots)
    reps = 8
    start = time.perf_counter()
    for _ in range(reps):
        ev.encrypt([0.5] * params.slots)
    encrypt_ms = (time.perf_counter() - start) * 1e3 / reps
    measured, modelled = 0.0, 0.0
    for level in (params.levels, 1):
        x = ev.mod_switch(c, level) if level < c.level else c
        start = time.perf_counter()
        for _ in range(reps):
            ev.rotate(x, 1)
        measured += time.perf_counter() - start
        modelled += reps * op_cost_ms("rotations", level, params) / 1e3
        start = time.perf_counter()
        for _ in range(reps):
            ev.mul(x, x)
        measured += time.perf_counter() - start
        modelled += reps * sum(op_cost_ms(op, level, params) / 1e3
                               for op in ("ct_ct_mults", "relinearizations", "rescales"))
    payload = cipher_codec.dump(ctx, [c])[1][0]
    mb = b1 / 1e6

    def rate(seconds: float) -> float:
        return mb / max(seconds, 1e-6)

    # key-switching keys made: 3 in the first context (public, relinearisation, one rotation), 4 in the second
    cal = Calibration(measured / modelled if modelled else 1.0, encrypt_ms, len(payload), max(0, b2 - b1), b1,
                      ((t1 - t0) + (t3 - t2)) * 1e3 / 7, rate(t2 - t1), rate(t4 - t3), rate(t5 - t4), 0.0)
    cal.seconds = time.perf_counter() - t0
    _CALIBRATIONS[key] = cal
    return cal


class _DryKeyOwner:
    """The dry run's key owner: counts each refresh and answers with top-level null ciphers."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx

    def refresh(self, ciphers: Any, stage: str = "", level: int | None = None) -> list[Any]:
        for c in ciphers:
            counters.record("refreshes", level=c.level)
        return [self.ctx.evaluator.encrypt(0.0, level=level) for _ in ciphers]

    def softmax_gradient(self, logits: EncTensor, labels: Any, level: int | None = None) -> EncTensor:
        """The exact-softmax protocol's round trip: its logits counted as refreshes (bytes and count alike)."""
        for c in logits.ciphers():
            counters.record("refreshes", level=c.level)
        return encrypt(torch.zeros(logits.shape), self.ctx, layout=logits.layout, level=level)

    def end_epoch(self, epoch: int, dataset: str, val_logits: list[EncTensor], state: dict) -> EpochVerdict:
        fresh = {k: encrypt(torch.zeros(v.shape), self.ctx, layout=v.layout) for k, v in state.items()}
        return EpochVerdict(fresh, False)

    def best_state(self) -> dict:
        return {}


def dry_counts(cfg: HetalConfig, num_features: int, num_classes: int, val_rows: list[int],
               unit: tuple[int, int], steps: int = 3) -> tuple[list[counters.OpCounts], counters.OpCounts]:
    """Op counts (by level) of ``steps`` training steps and of one validation pass, on null ciphers."""
    from .prepare import rotation_steps

    def run() -> tuple[list[counters.OpCounts], counters.OpCounts]:
        params = get_params(cfg.preset)
        null = null_context(params, rotation_steps(unit, num_classes), "dry run")
        rows = cfg.batch_size
        x = encrypt(torch.zeros(rows, num_features), null, layout=BlockLayout((rows, num_features), unit, "grid"))
        y = encrypt(torch.zeros(rows, num_classes), null, layout=BlockLayout((rows, num_classes), unit, "horizontal"))
        vals = [EncBatch(encrypt(torch.zeros(r, num_features), null,
                                 layout=BlockLayout((r, num_features), unit, "grid")), None, r) for r in val_rows]
        model = Linear(num_features, num_classes, init="zeros").encrypt(null, unit=unit)
        job = {"optimizer": cfg.optimizer, "lr": cfg.lr, "momentum": cfg.momentum}
        opt = make_optimizer(job, model.parameters())
        criterion = make_criterion({"softmax": cfg.softmax})
        if getattr(criterion, "labels_stay_with_key_owner", False):
            y = KeptLabels("train", 0, rows)
        trainer = Trainer(model, opt, _DryKeyOwner(null), criterion, progress=False)
        per_step = []
        with use_workers(1):
            for i in range(steps):
                with counters.count_ops() as ops:
                    trainer.train_step(x, y, 0, i)
                per_step.append(ops)
            with counters.count_ops() as val_ops:
                trainer.validation_logits(vals)
        return per_step, val_ops

    return contextvars.Context().run(run)


def _floor_seconds(ops: counters.OpCounts, params: CKKSParams) -> float:
    return sum(n * op_cost_ms(name, level, params) for (name, level), n in ops.by_level.items()) / 1e3


def _cipher_count(rows: int, features: int, classes: int, unit: tuple[int, int], batch: int, labels: bool) -> int:
    n = 0
    for start in range(0, rows, batch):
        r = min(batch, rows - start)
        n_a = math.ceil(r / unit[0])
        n += n_a * math.ceil(features / unit[1]) + (n_a if labels else 0)
    return n


def _rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 400.0


def estimate(cfg: HetalConfig, *, num_train: int, num_val: int, num_features: int, num_classes: int,
             kind: str = "features", calibration: Calibration | None = None) -> Estimate:
    """Plan a run of ``cfg`` on ``num_train`` / ``num_val`` samples of ``num_features`` features."""
    params = get_params(cfg.preset)
    d1 = num_features + 1  # the bias column the model adds
    unit = choose_unit(cfg.batch_size, d1, num_classes, params)
    steps_per_epoch = math.ceil(num_train / cfg.batch_size)
    if cfg.max_steps is not None:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps)
    val_rows = [min(cfg.batch_size, num_val - s) for s in range(0, num_val, cfg.batch_size)]
    steps, val_ops = dry_counts(cfg, num_features, num_classes, val_rows, unit)
    mean = Counter()
    for ops in steps:
        mean.update(ops.as_dict())
    ops_per_step = {k: v / len(steps) for k, v in mean.items() if v}
    cal = calibration or calibrate(cfg.preset, "seal" if cfg.backend == "seal" else cfg.backend)
    speedup = PARALLEL_SPEEDUP if (os.cpu_count() or 1) > 1 else 1.0
    step_s = sum(_floor_seconds(o, params) for o in steps) / len(steps) * cal.scale * OVERHEAD / speedup
    val_s = _floor_seconds(val_ops, params) * cal.scale * OVERHEAD / speedup
    from .prepare import rotation_steps

    exact = cfg.softmax == "exact"  # the key owner's softmax: no softmax keys, no encrypted training labels
    keys = len(rotation_steps(unit, num_classes, softmax=not exact))
    train_ciphers = _cipher_count(num_train, d1, num_classes, unit, cfg.batch_size, not exact)
    val_ciphers = _cipher_count(num_val, d1, num_classes, unit, cfg.batch_size, False)
    weight_ciphers = math.ceil(num_classes / unit[0]) * math.ceil(d1 / unit[1])
    public_bytes = cal.base_context_bytes + max(0, keys - 1) * cal.key_bytes
    # the key owner's own encryptions (data, refresh replies) travel in SEAL's seeded form: half a ciphertext
    fresh_share = 0.5 if "seeded" in wire_cuts() and cfg.backend == "seal" else 1.0  # (the plain backend has none)
    data_bytes = int((train_ciphers + val_ciphers) * cal.cipher_bytes * fresh_share)
    pub_mb, data_mb = public_bytes / 1e6, data_bytes / 1e6
    extract_s = EXTRACT_SECONDS.get(kind, 0.0) * (num_train + num_val) / 0.7 + BACKBONE_LOAD_SECONDS.get(kind, 0.0)
    # the key owner: keys (public, relinearisation and rotation keys), its public() view, encryption, the
    # workdir (secret context and data written), the upload (hashed and sent); the server loads the keys
    setup_s = (extract_s + cal.seconds + (keys + 2) * cal.keygen_ms_per_key / 1e3 + pub_mb / cal.load_mb_s
               + (train_ciphers + val_ciphers) * cal.encrypt_ms / 1e3 + 2 * pub_mb / cal.serialise_mb_s
               + 2 * (pub_mb + data_mb) / cal.hash_mb_s + pub_mb / cal.load_mb_s)
    # each epoch end: the state (weights, momentum) decrypted and encrypted again, sent both ways
    epoch_end_s = 2 * weight_ciphers * (cal.encrypt_ms * 2 / 1e3 + 2 * cal.cipher_bytes / 1e6 / cal.hash_mb_s)
    total = setup_s + cfg.epochs * (steps_per_epoch * step_s + val_s + epoch_end_s)
    refreshes = ops_per_step.get("refreshes", 0.0)
    # a refresh sends the cipher at level 0 (the base prime's share of the top's bits) and gets a fresh one back
    request_share = params.coeff_bits[0] / sum(params.coeff_bits[:-1])
    per_step_bytes = int(refreshes * (request_share + fresh_share) * cal.cipher_bytes)
    # in memory (measured on SEAL, 'fast'): key generation holds ~2x the keys' raw size, the public() view
    # another 1x; public_bytes() and its copies while sent ~1.5x the serialised size
    raw = 8 * params.poly_modulus_degree * 2 * (params.levels + 1)
    key_raw = raw * (params.levels + 2)
    base = _rss_mb()
    batch_ciphers = _cipher_count(cfg.batch_size, d1, num_classes, unit, cfg.batch_size, True)
    client = base + BACKBONE_MB.get(kind, 0.0) + (3 * (keys + 1) * key_raw + 1.5 * public_bytes
                                                  + (train_ciphers + val_ciphers) * raw) / 1e6
    server = base + (2 * (keys + 1) * key_raw + public_bytes + 5 * batch_ciphers * raw) / 1e6
    return Estimate(cfg.preset, unit, cfg.batch_size, steps_per_epoch, cfg.epochs, keys,
                    {k: round(v, 1) for k, v in ops_per_step.items()}, round(refreshes, 2), val_ops.refreshes,
                    step_s, val_s, extract_s, setup_s, total, public_bytes,
                    int(train_ciphers * cal.cipher_bytes * fresh_share),
                    int(val_ciphers * cal.cipher_bytes * fresh_share), per_step_bytes, client, server, asdict(cal))


def compare(est: dict[str, Any], measured: dict[str, Any]) -> list[tuple[str, float | None, float | None]]:
    """(quantity, estimate, measurement) rows for the report; None where a side was not measured."""
    keys = [("seconds per step", "step_seconds"), ("total seconds", "total_seconds"),
            ("refreshes per step", "refreshes_per_step"), ("upload MiB", "upload_bytes"),
            ("client peak MB", "client_peak_mb"), ("server peak MB", "server_peak_mb")]
    rows = []
    for label, k in keys:
        e, m = est.get(k), measured.get(k)
        if k == "upload_bytes":
            e = None if e is None else e / (1 << 20)
            m = None if m is None else m / (1 << 20)
        rows.append((label, e, m))
    return rows


BUILTIN_SHAPES = {"digits": (1797, 64, 10), "mnist": (5000, 1280, 10), "snips": (13084, 384, 7)}


def plan_sizes(cfg: HetalConfig, summary: Any = None) -> dict[str, Any]:
    """(train rows, validation rows, features, classes, kind) of the run ``cfg`` describes, without loading it."""
    if summary is not None:
        n, c = summary.num_samples, len(summary.classes)
        n_val, n_test = max(c, round(cfg.val_fraction * n)), max(c, round(cfg.test_fraction * n))
        return {"num_train": n - n_val - n_test, "num_val": n_val, "num_features": summary.num_features,
                "num_classes": c, "kind": summary.kind}
    n, d, c = BUILTIN_SHAPES[cfg.dataset]
    if cfg.dataset == "digits":
        n_val, n_test = round(0.15 * n), round(0.2 * n)
        return {"num_train": n - n_val - n_test, "num_val": n_val, "num_features": d, "num_classes": c,
                "kind": "features"}
    kind = "images" if cfg.dataset == "mnist" else "text"
    return {"num_train": cfg.n_train or n, "num_val": cfg.n_val or 700, "num_features": d, "num_classes": c,
            "kind": kind}
