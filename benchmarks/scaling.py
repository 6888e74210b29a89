"""How one encrypted training step scales with batch, features and classes, and the memory of a streamed dataset.

    python -m benchmarks.scaling [--quick] [--budget SECONDS] [--rows N] [--measure b,d,c ...]

Part 1 (time). For every grid point the step of ``benchmarks.train_step.bench_shape`` (forward DiagABT,
fused softmax-CE, backward DiagATB, SGD Nesterov, refreshes by the key owner) runs once on the
plaintext slot backend, which counts every op and its operand level exactly as SEAL would. The
**predicted** time is the op-count floor: Σ over (op, level) of count × the op's CPU cost at that
level, the costs measured once on real SEAL keys (``train_step.op_costs``). A few points are then
**measured**: one real SEAL step each, in a fresh process (so its peak RSS is the step's own).

Part 2 (memory). A training set of random unit-norm features is encrypted batch by batch into the
on-disk dataset format (``storage.dataset``), then streamed batch by batch the way the Trainer
iterates it, each side in a fresh process; peak RSS is the kernel's high-water mark VmHWM (SEAL's
memory is invisible to tracemalloc), restarted between phases. Writes benchmarks/results/scaling.md and scaling.png.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from benchmarks import train_step as ts
from encrypted_torch.ckks.params import get_params
from encrypted_torch.ckks.public import PublicContext
from encrypted_torch.ckks.secret import SecretContext
from encrypted_torch.client.encrypt_data import encrypt_batches
from encrypted_torch.client.key_owner import KeyOwner
from encrypted_torch.data.dataset import DataLoader
from encrypted_torch.hetal.pipeline import normalise, rotation_steps
from encrypted_torch.nn.linear import Linear
from encrypted_torch.optim import SGD
from encrypted_torch.storage.dataset import DatasetWriter, StreamingLoader, open_dataset
from encrypted_torch.training.trainer import Trainer
from encrypted_torch.training.unit_choice import choose_unit

RESULTS = Path(__file__).parent / "results"
SAVED = Path(tempfile.gettempdir()) / "scaling_results.json"
Shape = tuple[int, int, int]  # (batch, features incl. the bias column, classes)
SHOWN = ["rotations", "conjugations", "ct_ct_mults", "relinearizations", "ct_pt_mults", "rescales", "refreshes"]
HETAL_MNIST_ROWS = 52_500  # HETAL.md §5: MNIST train / val / test = 52,500 / 7,500 / 10,000


@dataclass
class Config:
    """What one run measures: the three series, the SEAL points, and the dataset of the memory part."""

    preset: str = ts.PRESET
    series: dict[str, list[Shape]] = field(default_factory=lambda: {
        "batch": [(b, 769, 10) for b in (256, 512, 1024, 2048)],
        "features": [(1024, d, 10) for d in (129, 385, 769, 1281)],
        "classes": [(1024, 769, c) for c in (2, 4, 7, 10, 16)],
    })
    measured: list[Shape] = field(default_factory=lambda: [(1024, 129, 10), (512, 769, 10), (1024, 769, 10),
                                                           (1024, 769, 2)])
    cost_repeats: int = 5
    mem_rows: int = 8192
    mem_batch: int = 1024
    mem_features: int = 769
    mem_classes: int = 10


QUICK = Config(preset="test", series={"batch": [(b, 33, 4) for b in (32, 64, 128)],
                                      "features": [(64, d, 4) for d in (17, 33, 65)],
                                      "classes": [(64, 33, c) for c in (2, 4, 8)]},
               measured=[(32, 33, 4), (64, 33, 4), (64, 17, 4)], cost_repeats=3,
               mem_rows=512, mem_batch=128, mem_features=65, mem_classes=4)


# --- op counts by level ---------------------------------------------------------------------------------
def totals(by_level: dict) -> dict[str, int]:
    """Counts summed over levels, by op name."""
    out: dict[str, int] = {}
    for (name, _), n in by_level.items():
        out[name] = out.get(name, 0) + n
    return out


# --- one training step ----------------------------------------------------------------------------------
def random_data(rows: int, features: int, classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm random features of width ``features - 1`` (the model adds the bias column) and labels."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, features - 1, generator=g, dtype=torch.float64)
    return normalise(x)[0], torch.randint(0, classes, (rows,), generator=g)


@dataclass
class StepSetup:
    secret: SecretContext
    trainer: Trainer
    x: Any
    y: Any
    unit: tuple[int, int]


def make_step(shape: Shape, preset: str, backend: str) -> StepSetup:
    """Keys, one encrypted batch, model and optimizer exactly as ``train_step.bench_shape`` builds them."""
    batch, features, classes = shape
    unit = choose_unit(batch, features, classes, preset)
    secret = SecretContext.create(preset, rotations=rotation_steps(unit, classes), backend=backend)
    client = KeyOwner(secret)
    x, y = random_data(batch, features, classes)
    train = client.encrypt_dataset(x, y, num_classes=classes, batch_size=batch, seed=0, unit=unit)
    b = next(iter(DataLoader(train, shuffle=False)))
    torch.manual_seed(0)
    model = Linear(features - 1, classes).encrypt(client.public_context, unit=train.unit)
    opt = SGD(model.parameters(), lr=ts.LR, momentum=ts.MOMENTUM, nesterov=True)
    return StepSetup(secret, Trainer(model, opt, client, progress=False), b.x, b.y, unit)


def run_step(setup: StepSetup) -> dict[str, Any]:
    """One (first) training step: wall and CPU seconds, its records and its op counts by level."""
    cpu = ts.cpu_seconds()
    with ts.count_by_level() as by_level:
        rec = setup.trainer.train_step(setup.x, setup.y, 0, 0)
    return {"wall": rec.seconds, "cpu": ts.cpu_seconds() - cpu, "breakdown": rec.breakdown,
            "by_level": by_level, "weight_level": rec.weight_level}


def count_shape(shape: Shape, preset: str) -> dict:
    """Op counts by level of one step on the plaintext slot backend (exact, about a second)."""
    return run_step(make_step(shape, preset, "plain"))["by_level"]


def measure_shape(shape: Shape, preset: str, cost_repeats: int = 0) -> dict[str, Any]:
    """One real SEAL step (and, if ``cost_repeats``, the per-op costs on the same keys); peak RSS."""
    t0 = time.perf_counter()
    setup = make_step(shape, preset, "seal")
    out = {"setup": time.perf_counter() - t0, "unit": setup.unit, **run_step(setup)}
    if cost_repeats:
        out["costs"] = ts.op_costs(setup.secret, repeats=cost_repeats)
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def predict(by_level: dict, costs: dict, preset: str) -> tuple[float, dict[str, float]]:
    """The op-count floor in seconds, and its split by op."""
    floor, parts = ts.floor_ms(by_level, costs, get_params(preset).levels)
    return floor / 1e3, {k: v / 1e3 for k, v in parts.items()}


# --- memory -----------------------------------------------------------------------------------------------
def _status_mb(field_name: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb() -> float:
    """Current resident set size (VmRSS)."""
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    """Peak RSS of this process image (VmHWM, the counter behind ru_maxrss). ru_maxrss itself is not used: a
    child started by exec inherits its parent's high-water mark in it."""
    return _status_mb("VmHWM")


def reset_peak() -> None:
    """Restart the peak RSS count from the current RSS (Linux clear_refs; ignored where not allowed)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def dir_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def encrypt_to_disk(directory: Path, rows: int, features: int, classes: int, batch: int, preset: str,
                    backend: str = "seal") -> dict[str, Any]:
    """Client side: keys, then encrypt and write one batch at a time (DatasetWriter); sizes and RSS."""
    directory = Path(directory)
    t0, rss0 = time.perf_counter(), rss_mb()
    unit = choose_unit(batch, features, classes, preset)
    secret = SecretContext.create(preset, rotations=rotation_steps(unit, classes), backend=backend)
    pub = secret.public()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "public.ctx").write_bytes(secret.public_bytes())
    rss_keys, peak_keys, keys_s = rss_mb(), peak_rss_mb(), time.perf_counter() - t0
    reset_peak()
    writer = DatasetWriter(directory / "train", pub, name="train", num_classes=classes, num_features=features - 1,
                           unit=unit)
    ciphers = 0
    for i, start in enumerate(range(0, rows, batch)):
        x, y = random_data(min(batch, rows - start), features, classes, seed=i)
        ds, _ = encrypt_batches(x, y, pub, num_classes=classes, batch_size=batch, shuffle=False, unit=unit)
        b = ds.batches[0]
        ciphers = max(ciphers, len(b.x.ciphers()) + len(b.y.ciphers()))
        writer.add(b.x, b.y, b.rows)
    manifest = writer.close()
    return {"seconds": time.perf_counter() - t0, "keys_seconds": keys_s, "rss_start_mb": rss0,
            "rss_keys_mb": rss_keys, "peak_keys_mb": peak_keys, "peak_rss_mb": max(peak_keys, peak_rss_mb()),
            "peak_encrypt_mb": peak_rss_mb(), "unit": unit, "batches": len(manifest.batches),
            "ciphers_per_batch": ciphers, "data_bytes": dir_bytes(directory / "train"),
            "context_bytes": (directory / "public.ctx").stat().st_size}


def stream_dataset(directory: Path) -> dict[str, Any]:
    """Server side: load the public context, then iterate every batch as Trainer.fit does; RSS along the way."""
    directory = Path(directory)
    t0, rss0 = time.perf_counter(), rss_mb()
    ctx = PublicContext.from_bytes((directory / "public.ctx").read_bytes())
    rss_keys, peak_keys = rss_mb(), peak_rss_mb()
    reset_peak()
    ds = open_dataset(directory / "train", ctx)
    rss_batch, n = 0.0, 0
    for b in StreamingLoader(ds, shuffle=True, seed=0):  # as Trainer.fit: the previous batch is freed on rebinding
        n += 1
        if n == 1:
            rss_batch = rss_mb()
        assert b.x.level == ctx.params.levels
    return {"seconds": time.perf_counter() - t0, "rss_start_mb": rss0, "rss_keys_mb": rss_keys,
            "peak_keys_mb": peak_keys, "rss_keys_one_batch_mb": rss_batch, "peak_stream_mb": peak_rss_mb(),
            "peak_rss_mb": max(peak_keys, peak_rss_mb()), "batches": n}


def hold_dataset(directory: Path) -> dict[str, Any]:
    """Load every batch and keep them all (an in-memory EncDataset); RSS before and after."""
    directory = Path(directory)
    ctx = PublicContext.from_bytes((directory / "public.ctx").read_bytes())
    ds = open_dataset(directory / "train", ctx)
    rss_keys = rss_mb()
    held = [ds.load_batch(i) for i in range(len(ds))]
    return {"rss_keys_mb": rss_keys, "rss_all_mb": rss_mb(), "peak_rss_mb": peak_rss_mb(), "batches": len(held)}


def in_fresh_process(fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(*args)`` in a new interpreter (spawn), so its peak RSS is its own."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def memory_part(cfg: Config, directory: Path, backend: str = "seal", fresh: bool = True) -> dict[str, Any]:
    """Encrypt the set to disk, stream it, hold it; each in a fresh process unless ``fresh`` is False."""
    run = in_fresh_process if fresh else (lambda fn, *a: fn(*a))
    out = {"client": run(encrypt_to_disk, directory, cfg.mem_rows, cfg.mem_features, cfg.mem_classes,
                         cfg.mem_batch, cfg.preset, backend)}
    out["server"] = run(stream_dataset, directory)
    out["hold"] = run(hold_dataset, directory)
    return out


# --- the run ---------------------------------------------------------------------------------------------
def all_shapes(cfg: Config) -> list[Shape]:
    return sorted({s for shapes in cfg.series.values() for s in shapes} | set(cfg.measured))


def run_all(cfg: Config, budget: float | None, workdir: Path, save: Callable[[dict], None]) -> dict[str, Any]:
    """Counts for every shape, then SEAL points (the first also measures op costs), the memory part, the rest."""
    t0 = time.perf_counter()
    res: dict[str, Any] = {"config": asdict(cfg), "counts": {}, "measured": {}, "skipped": [], "memory": None,
                           "code": code_revision(), "uptime_start": uptime()}
    for shape in all_shapes(cfg):
        res["counts"][shape] = count_shape(shape, cfg.preset)
        print(f"counted {shape}: {totals(res['counts'][shape]).get('rotations', 0)} rotations", flush=True)
    stages: list[tuple[str, Callable[[], float], Callable[[], None]]] = []
    for i, shape in enumerate(cfg.measured):
        stages.append((f"SEAL step {shape}", lambda s=shape: seal_estimate(res, s), lambda s=shape, k=i: res[
            "measured"].__setitem__(s, in_fresh_process(measure_shape, s, cfg.preset, cfg.cost_repeats * (k == 0)))))
        if i == 0:
            stages.append(("memory", lambda: 30 + 25 * -(-cfg.mem_rows // cfg.mem_batch),
                           lambda: res.__setitem__("memory", memory_part(cfg, workdir))))
    for name, estimate, stage in stages:
        elapsed, need = time.perf_counter() - t0, estimate()
        if budget is not None and elapsed + need > budget:
            res["skipped"].append(f"{name} (time budget: {elapsed:.0f} s spent, about {need:.0f} s more needed, "
                                  f"budget {budget:.0f} s)")
            print(f"skipped {name}: budget", flush=True)
            continue
        print(f"{name} (about {need:.0f} s) ...", flush=True)
        stage()
        res["seconds"], res["uptime_end"] = time.perf_counter() - t0, uptime()
        save(res)
    res["seconds"], res["uptime_end"] = time.perf_counter() - t0, uptime()
    return res


def seal_estimate(res: dict[str, Any], shape: Shape) -> float:
    """Rough wall seconds of a SEAL point (keys, encryption, step): from its prediction once costs are known."""
    costs = costs_of(res)
    return 40 + 1.5 * predict(res["counts"][shape], costs, res["config"]["preset"])[0] if costs else 90.0


def costs_of(res: dict[str, Any]) -> dict:
    """The per-op costs measured with the first SEAL point (empty if none ran)."""
    return next((m["costs"] for m in res["measured"].values() if "costs" in m), {})


# --- saving -------------------------------------------------------------------------------------------------
def _key(k: Any) -> str:
    return json.dumps(list(k)) if isinstance(k, tuple) else str(k)


def _unkey(k: str) -> Any:
    return tuple(json.loads(k)) if k.startswith("[") else k


def to_json(obj: Any) -> Any:
    """Results with tuple keys (shapes, (op, level)) as JSON-safe strings."""
    if isinstance(obj, dict):
        return {_key(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    return obj


def from_json(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {_unkey(k): from_json(v) for k, v in obj.items()}
    return obj


def save_results(res: dict, path: Path = SAVED) -> None:
    path.write_text(json.dumps(to_json(res)))


def load_results(path: Path = SAVED) -> dict:
    res = from_json(json.loads(path.read_text()))
    res["config"]["series"] = {k: [tuple(s) for s in v] for k, v in res["config"]["series"].items()}
    res["config"]["measured"] = [tuple(s) for s in res["config"]["measured"]]
    return res


# --- report -----------------------------------------------------------------------------------------------
def rows_of(res: dict) -> list[dict[str, Any]]:
    """One row per (series, shape): counts, prediction, and the measurement if there is one."""
    costs, preset, out = costs_of(res), res["config"]["preset"], []
    for series, shapes in res["config"]["series"].items():
        for shape in shapes:
            by_level = res["counts"][shape]
            pred, parts = predict(by_level, costs, preset) if costs else (float("nan"), {})
            out.append({"series": series, "shape": shape, "ops": totals(by_level), "pred": pred, "parts": parts,
                        "unit": choose_unit(shape[0], shape[1], shape[2], preset),
                        "meas": res["measured"].get(shape)})
    return out


def _levels_text(by_level: dict, name: str) -> str:
    items = sorted(((lvl, n) for (k, lvl), n in by_level.items() if k == name and n), key=lambda t: -(t[0] or 0))
    return " ".join(f"L{lvl}:{n}" for lvl, n in items)


def time_table(res: dict) -> list[str]:
    lines = ["| series | (b, d+1, c) | unit | " + " | ".join(SHOWN) + " | predicted s | rotation share "
             "| measured CPU s | measured wall s | CPU / predicted |", "|---|---|---|" + "---:|" * (len(SHOWN) + 5)]
    for r in rows_of(res):
        m = r["meas"]
        meas = (f"{m['cpu']:.1f} | {m['wall']:.1f} | {m['cpu'] / r['pred']:.2f}" if m else "– | – | –")
        share = r["parts"].get("rotations", 0.0) / r["pred"] if r["pred"] else float("nan")
        lines.append(f"| {r['series']} | {r['shape']} | {r['unit']} | "
                     + " | ".join(str(r["ops"].get(k, 0)) for k in SHOWN)
                     + f" | {r['pred']:.1f} | {share:.0%} | {meas} |")
    return lines


def measured_table(res: dict) -> list[str]:
    lines = ["| (b, d+1, c) | setup s (keys, encryption) | step wall s | step CPU s | predicted s | "
             "peak RSS of the process, MB | op counts = plaintext backend's |", "|---|---:|---:|---:|---:|---:|---|"]
    costs, preset = costs_of(res), res["config"]["preset"]
    for shape, m in res["measured"].items():
        same = "yes" if m["by_level"] == res["counts"][shape] else "**no**"
        pred = predict(res["counts"][shape], costs, preset)[0] if costs else float("nan")
        lines.append(f"| {shape} | {m['setup']:.1f} | {m['wall']:.1f} | {m['cpu']:.1f} | {pred:.1f} | "
                     f"{m['peak_rss_mb']:.0f} | {same} (by op and level) |")
    return lines


def memory_lines(res: dict) -> list[str]:
    mem, cfg = res["memory"], res["config"]
    if not mem:
        return ["Not run (see skipped)."]
    c, s, h = mem["client"], mem["server"], mem["hold"]
    per_batch_disk = c["data_bytes"] / c["batches"]
    per_batch_ram = (h["rss_all_mb"] - h["rss_keys_mb"]) / h["batches"]
    hetal_batches = -(-HETAL_MNIST_ROWS // cfg["mem_batch"])
    gb = 1 << 30
    return [
        f"{cfg['mem_rows']} rows × {cfg['mem_features'] - 1} features (d+1 = {cfg['mem_features']} with the bias "
        f"the model adds), {cfg['mem_classes']} classes, batch "
        f"{cfg['mem_batch']}, preset \"{cfg['preset']}\", unit {tuple(c['unit'])}: {c['batches']} batches of "
        f"{c['ciphers_per_batch']} ciphertexts (features + labels). All numbers measured except the last column.",
        "",
        "| quantity | measured | extrapolated to HETAL's MNIST train set "
        f"({HETAL_MNIST_ROWS:,} rows = {hetal_batches} batches) |",
        "|---|---:|---:|",
        f"| dataset on disk | {c['data_bytes'] / gb:.2f} GiB ({per_batch_disk / (1 << 20):.0f} MiB / batch) | "
        f"{per_batch_disk * hetal_batches / gb:.1f} GiB |",
        f"| public context (evaluation keys) on disk | {c['context_bytes'] / (1 << 20):.0f} MiB | same |",
        f"| server: RSS after imports | {s['rss_start_mb']:.0f} MB | same |",
        f"| server: RSS with the evaluation keys loaded (peak while loading: {s['peak_keys_mb']:.0f} MB) | "
        f"{s['rss_keys_mb']:.0f} MB | same |",
        f"| server: RSS with keys + one batch | {s['rss_keys_one_batch_mb']:.0f} MB | same |",
        f"| **server: peak RSS while streaming all {s['batches']} batches** ({s['seconds']:.0f} s in all) | "
        f"**{s['peak_stream_mb']:.0f} MB** | same (does not grow with the set) |",
        f"| server: RSS holding all {h['batches']} batches in RAM | {h['rss_all_mb']:.0f} MB "
        f"({per_batch_ram:.0f} MB / batch) | {(h['rss_keys_mb'] + per_batch_ram * hetal_batches) / 1024:.1f} GB |",
        f"| client: RSS with keys generated (peak during keygen: {c['peak_keys_mb']:.0f} MB, {c['keys_seconds']:.0f} s)"
        f" | {c['rss_keys_mb']:.0f} MB | same |",
        f"| client: peak RSS encrypting + writing one batch at a time ({c['seconds'] - c['keys_seconds']:.0f} s) | "
        f"{c['peak_encrypt_mb']:.0f} MB | same |",
    ]


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def code_revision() -> str:
    """The git commit measured, and whether the package or train_step.py differ from it."""
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "encrypted_torch", "benchmarks/train_step.py"],
                               cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{rev}" + (" with uncommitted changes to the package or train_step.py" if dirty else " (clean)")


def render(res: dict) -> str:
    """The results page: method, time table, measured points, memory, machine."""
    costs, cfg = costs_of(res), res["config"]
    up = f"`uptime` at the end: `{res.get('uptime_end', '?')}`"
    if res.get("uptime_start"):
        up = f"`uptime` at the start: `{res['uptime_start']}`; at the end: `{res.get('uptime_end', '?')}`"
    p = get_params(cfg["preset"])
    lines = [
        f"# Scaling of one encrypted training step, and memory of a streamed dataset (preset \"{cfg['preset']}\": "
        f"N={p.poly_modulus_degree}, {p.levels} levels, SEAL)",
        "",
        f"`{res.get('command', 'python -m benchmarks.scaling')}`. The step is "
        "`benchmarks/train_step.py`'s: forward DiagABT, fused softmax-CE, backward DiagATB, SGD Nesterov "
        f"(lr {ts.LR}, momentum {ts.MOMENTUM}), refreshes by the in-process key owner; the first step (it creates the "
        "momentum buffers), on random unit-norm features.",
        "",
        "- **Predicted** = the op-count floor: op counts by operand level from one step on the *plaintext slot "
        "backend* (same code, same level and refresh bookkeeping), × each op's median CPU cost at that level "
        f"measured once on real SEAL keys ({cfg['cost_repeats']} runs per op and level, `train_step.op_costs`, keys of "
        f"{next(iter(res['measured']), '–')}). A CPU-time prediction: it ignores encodings of fresh masks, Python "
        "overhead and waiting for a core.",
        "- **Measured** = one real SEAL step in a fresh process: wall (includes waiting for a core on this shared "
        "machine) and CPU seconds of the process.",
        "",
        "![scaling](scaling.png)",
        "",
        "## Step time and op counts per grid point",
        "",
        *time_table(res),
        "",
        "## Measured SEAL steps",
        "",
        *measured_table(res),
        "",
        "Rotations by operand level (L" + str(p.levels) + " = fresh):",
        "",
        *[f"- {r['series']} {r['shape']}: {_levels_text(res['counts'][r['shape']], 'rotations')}"
          for r in rows_of(res)],
        "",
        "## Memory of an encrypted training set streamed from disk",
        "",
        *memory_lines(res),
        "",
        "Each side runs in a fresh process. RSS = VmRSS; peak = VmHWM (/proc/self/status), restarted with "
        "`clear_refs` after the keys are loaded. Not `ru_maxrss`: on this kernel a spawned child reports its parent's "
        "high-water mark there (checked: a child of a 1.9 GB parent kept reporting 1.9 GB after allocating 2.9 GB). "
        "The server iterates `StreamingLoader(open_dataset(...))` as `Trainer.fit` iterates its loader: the next "
        "batch is loaded (and checksummed) while the previous one is still bound, so the peak holds up to two batches. "
        "The client writes each batch with `DatasetWriter` as soon as it is encrypted; the CLI's "
        "`encrypt_dataset` + `write_dataset` path instead holds the whole encrypted set first (≈ the hold-all row).",
    ]
    if costs:
        lines += ["", "## Per-op CPU cost (ms) by operand level", "",
                  "| op | " + " | ".join(f"L{lvl}" for lvl in range(p.levels, -1, -1)) + " |",
                  "|---|" + "---:|" * (p.levels + 1)]
        for k in ts.COSTED:
            lines.append(f"| {k} | " + " | ".join(f"{costs[(k, lvl)]:.2f}" for lvl in range(p.levels, -1, -1)) + " |")
    if res["skipped"]:
        lines += ["", "Not run: " + "; ".join(res["skipped"]) + "."]
    lines += ["", f"Machine: {platform.machine()}, `nproc` = {os.cpu_count()}, Python {platform.python_version()}, "
              f"shared with other jobs. {up}. "
              f"Total run time {res.get('seconds', 0.0):.0f} s. Code: commit {res.get('code', '?')}.", ""]
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    """Three panels (batch, features, classes): predicted line, measured CPU and wall markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = rows_of(res)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, (series, axis) in zip(axes, [("batch", 0), ("features", 1), ("classes", 2)], strict=True):
        pts = [r for r in rows if r["series"] == series]
        xs = [r["shape"][axis] for r in pts]
        ax.plot(xs, [r["pred"] for r in pts], "-o", ms=3, label="predicted (op-count floor)")
        for r, x in zip(pts, xs, strict=True):
            ax.annotate(f"{r['ops'].get('rotations', 0)} rot\n{r['ops'].get('refreshes', 0)} refr", (x, r["pred"]),
                        textcoords="offset points", xytext=(0, -8), ha="center", va="top", fontsize=7)
        meas = [(x, r["meas"]) for r, x in zip(pts, xs, strict=True) if r["meas"]]
        if meas:
            ax.plot([x for x, _ in meas], [m["cpu"] for _, m in meas], "s", color="C3", label="measured CPU")
            ax.plot([x for x, _ in meas], [m["wall"] for _, m in meas], "D", mfc="none", color="C2",
                    label="measured wall")
        fixed = {0: "d+1={1}, c={2}", 1: "b={0}, c={2}", 2: "b={0}, d+1={1}"}[axis].format(*pts[0]["shape"])
        ys = [v for v in [r["pred"] for r in pts] + [max(m["cpu"], m["wall"]) for _, m in meas] if v == v]
        ax.set(title=f"{series} ({fixed})", xlabel={"features": "features d+1"}.get(series, series),
               ylabel="seconds per step", xticks=xs, ylim=(0, 1.2 * max(ys, default=1.0)))
        ax.margins(x=0.08)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"One encrypted training step (preset \"{res['config']['preset']}\", SEAL)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(res: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "scaling.md").write_text(render(res))
    plot(res, out / "scaling.png")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes on the 'test' preset (a minute)")
    parser.add_argument("--budget", type=float, default=1200.0, help="skip the SEAL stages (and the memory part, "
                        "run after the first SEAL point) that would not end within this many seconds of the start")
    parser.add_argument("--rows", type=int, default=None, help="rows of the memory part's dataset")
    parser.add_argument("--measure", nargs="+", default=None, help="SEAL points b,d,c (the first measures op costs)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the encrypted dataset goes (deleted)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--rerender", action="store_true", help="re-render the last run's saved results")
    args = parser.parse_args(argv)
    if args.rerender:
        write_outputs(load_results(), args.out)
        return
    cfg = QUICK if args.quick else Config()
    if args.rows:
        cfg = replace(cfg, mem_rows=args.rows)
    if args.measure:
        cfg = replace(cfg, measured=[tuple(int(v) for v in m.split(",")) for m in args.measure])

    def save(res: dict) -> None:
        res["command"] = " ".join(["python -m benchmarks.scaling", *(argv if argv is not None else sys.argv[1:])])
        save_results(res)
        write_outputs(res, args.out)  # after every stage, so a cut-short run still leaves a page

    with tempfile.TemporaryDirectory(dir=args.workdir) as work:
        res = run_all(cfg, args.budget, Path(work), save)
    save(res)
    print((args.out / "scaling.md").read_text())


if __name__ == "__main__":
    main()
