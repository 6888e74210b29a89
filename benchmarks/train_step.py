"""One full encrypted training step at HETAL's shapes, against the op-count floor and plain torch.

    python -m benchmarks.train_step [--shapes 512,769,3 1024,769,7] [--repeats N] [--warmup K]

Per shape (batch, features incl. bias, classes), built with the public API as pipeline.run does:
KeyOwner (preset "fast", N=16384, SEAL), ``encrypt_dataset`` of random unit-norm features of width
768 (the bias column makes 769), ``nn.Linear(768, c).encrypt``, ``optim.SGD`` (Nesterov momentum),
``Trainer(...).train_step(x, y)`` with the key owner's SecretContext as refresher. Prints the wall
and CPU time of the step (median over ``--repeats`` steps after ``--warmup`` steps), its breakdown
by section, its op counts, and the **floor** = Σ over (op, level) of count × measured CPU cost of
that op at that level. The counts come split by operand level from the package's counters (also
for ops run in worker processes); the per-op costs are measured in the same run, on the same keys,
at every level. CPU time includes the worker processes'. Writes benchmarks/results/train_step.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pickle
import platform
import statistics
import subprocess
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from encrypted_torch import parallel
from encrypted_torch.ckks import counters
from encrypted_torch.ckks.evaluator import Cipher
from encrypted_torch.ckks.params import get_params
from encrypted_torch.ckks.secret import SecretContext
from encrypted_torch.client.key_owner import KeyOwner
from encrypted_torch.data.dataset import DataLoader
from encrypted_torch.hetal.pipeline import normalise, rotation_steps
from encrypted_torch.nn.linear import Linear
from encrypted_torch.nn.loss import KeyOwnerCrossEntropyLoss
from encrypted_torch.optim import SGD
from encrypted_torch.training.trainer import Trainer
from encrypted_torch.training.unit_choice import choose_unit

RESULTS = Path(__file__).parent / "results" / "train_step.md"
SHAPES = [(512, 769, 3), (1024, 769, 7), (1024, 769, 10), (2048, 769, 10)]
PRESET = "fast"
LR, MOMENTUM = 1.0, 0.9
# The counters that cost time, in the order printed; additions etc. are counted too but cheap.
COSTED = ["rotations", "conjugations", "ct_ct_mults", "relinearizations", "ct_pt_mults", "rescales",
          "additions", "mod_switches", "encryptions", "refreshes"]
SHOWN = ["rotations", "conjugations", "ct_ct_mults", "ct_pt_mults", "rescales", "relinearizations",
         "additions", "mod_switches", "encryptions", "scale_alignments", "refreshes"]
# HETAL.md §5: the paper's GPU time per iteration (HEaaN FGb, N=2^16, GPU).
HETAL_GPU = "4.29–15.72 s (range over datasets); MNIST (1024, 769, 10) ≈ 9.46 s derived (3442 s / 364 steps)"

# --- op counts split by level ------------------------------------------------------------------------
@contextlib.contextmanager
def count_by_level() -> Iterator[dict]:
    """(op, operand level) → count for the block; a refresh's own re-encryption is charged to the
    refresh, not to "encryptions"."""
    table: dict = defaultdict(int)
    with counters.count_ops() as ops:
        yield table
    table.update(ops.by_level)
    refreshes = ops.refreshes
    top = max((lvl for (name, lvl) in table if name == "encryptions" and lvl is not None), default=None)
    if refreshes and top is not None:
        table[("encryptions", top)] -= refreshes


def cpu_seconds() -> float:
    """CPU time of this process and of its finished worker processes."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


# --- per-op costs at every level ---------------------------------------------------------------------
def _cpu_ms(run: Callable[[Any], Any], prepare: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        arg = prepare()
        t = time.process_time()
        run(arg)
        times.append(1e3 * (time.process_time() - t))
    return statistics.median(times)


def op_costs(secret: SecretContext, repeats: int = 3) -> dict[tuple[str, int], float]:
    """Median CPU ms of each costed op at each level (the operand's level), on the run's own keys."""
    pub = secret.public()
    ev = pub.evaluator
    rng = np.random.default_rng(1)
    n, top = ev.slots, ev.top_level
    step = min(pub.backend.rotation_steps)  # a step with its own key: one key switch
    mask = rng.uniform(-1, 1, n)

    def at(level: int) -> Callable[[], Cipher]:
        return lambda: ev.mod_switch(ev.encrypt(rng.uniform(-1, 1, n)), level)

    costs: dict[tuple[str, int], float] = {}
    with counters.count_ops():  # keep these ops out of any outer count
        for lvl in range(top, -1, -1):
            c = at(lvl)
            costs[("rotations", lvl)] = _cpu_ms(lambda a: ev.rotate(a, step), c, repeats)
            costs[("conjugations", lvl)] = _cpu_ms(ev.conjugate, c, repeats)
            costs[("additions", lvl)] = _cpu_ms(lambda ab: ev.add(*ab), lambda lv=lvl: (at(lv)(), at(lv)()), repeats)
            costs[("refreshes", lvl)] = _cpu_ms(lambda a: secret.refresh([a]), c, repeats)
            costs[("encryptions", lvl)] = _cpu_ms(lambda v, lv=lvl: ev.encrypt(v, level=lv), lambda: mask, repeats)
            if lvl == 0:
                for k in ["ct_ct_mults", "relinearizations", "ct_pt_mults", "rescales", "mod_switches"]:
                    costs[(k, 0)] = costs[(k, 1)]  # not possible at level 0; never counted there
                continue
            pair = lambda lv=lvl: (at(lv)(), at(lv)())  # noqa: E731
            costs[("ct_ct_mults", lvl)] = _cpu_ms(lambda ab: ev.mul_raw(*ab), pair, repeats)
            costs[("relinearizations", lvl)] = _cpu_ms(ev.relinearize, lambda p=pair: ev.mul_raw(*p()), repeats)
            costs[("rescales", lvl)] = _cpu_ms(ev.rescale, lambda p=pair: ev.relinearize(ev.mul_raw(*p())), repeats)
            ev.mul_plain(c(), mask)  # encode the mask once (cached as masks are)
            mp = _cpu_ms(lambda a: ev.mul_plain(a, mask), c, repeats)
            costs[("ct_pt_mults", lvl)] = max(0.0, mp - costs[("rescales", lvl)])
            costs[("mod_switches", lvl)] = _cpu_ms(lambda a, lv=lvl: ev.mod_switch(a, lv - 1), c, repeats)
    return costs


def floor_ms(by_level: dict, costs: dict, top: int) -> tuple[float, dict[str, float]]:
    parts: dict[str, float] = defaultdict(float)
    for (name, lvl), count in by_level.items():
        if name not in COSTED:
            continue
        lvl = top if lvl is None else lvl
        parts[name] += count * costs[(name, lvl)]
    return sum(parts.values()), dict(parts)


# --- the steps ----------------------------------------------------------------------------------------
def random_data(batch: int, classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 768, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (batch,), generator=g)
    return normalise(x)[0], y


def plain_step_ms(batch: int, classes: int, repeats: int = 50) -> tuple[float, float]:
    """The same step in plain torch (float64, exact softmax cross-entropy, SGD Nesterov), one thread:
    median and min ms (on a loaded machine the min is closer to the step's own cost)."""
    x, y = random_data(batch, classes)
    model = torch.nn.Linear(768, classes).double()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, nesterov=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    times = []
    try:
        for _ in range(repeats + 3):
            t = time.perf_counter()
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            times.append(1e3 * (time.perf_counter() - t))
    finally:
        torch.set_num_threads(threads)
    return statistics.median(times[3:]), min(times[3:])


def bench_shape(batch: int, features: int, classes: int, repeats: int, warmup: int,
                unit: tuple[int, int] | None = None, softmax: str = "hetal") -> dict[str, Any]:
    assert features == 769, "features include the bias column: 768 + 1"
    t0 = time.perf_counter()
    unit = unit or choose_unit(batch, features, classes, PRESET)
    secret = SecretContext.create(PRESET, rotations=rotation_steps(unit, classes), backend="seal")
    client = KeyOwner(secret)
    x, y = random_data(batch, classes)
    exact = softmax == "exact"  # the key owner evaluates the exact softmax; the labels stay with it
    train = client.encrypt_dataset(x, y, num_classes=classes, batch_size=batch, seed=0, unit=unit, keep_labels=exact)
    batch_enc = next(iter(DataLoader(train, shuffle=False)))
    target = batch_enc.kept_labels if exact else batch_enc.y
    torch.manual_seed(0)
    model = Linear(768, classes).encrypt(client.public_context, unit=train.unit)
    opt = SGD(model.parameters(), lr=LR, momentum=MOMENTUM, nesterov=True)
    trainer = Trainer(model, opt, client, KeyOwnerCrossEntropyLoss() if exact else None, progress=False)
    setup = time.perf_counter() - t0
    print(f"  setup (keys, encryption) {setup:.1f} s, unit {unit}", flush=True)
    records = []
    for i in range(warmup + repeats):
        cpu = cpu_seconds()
        with count_by_level() as by_level:
            rec = trainer.train_step(batch_enc.x, target, 0, i)
        cpu = cpu_seconds() - cpu
        print(f"  step {i}{' (warm-up)' if i < warmup else ''}: {rec.seconds:.1f} s wall, {cpu:.1f} s CPU, "
              f"refreshes {rec.ops['refreshes']}, weight level {rec.weight_level}", flush=True)
        if i >= warmup:
            records.append((rec, cpu, dict(by_level)))
    t1 = time.perf_counter()
    costs = op_costs(secret)
    print(f"  per-op costs at {get_params(PRESET).levels + 1} levels measured in {time.perf_counter() - t1:.0f} s",
          flush=True)
    top = get_params(PRESET).levels
    mid = sorted(range(len(records)), key=lambda k: records[k][0].seconds)[len(records) // 2]
    rec, cpu, by_level = records[mid]
    floor, parts = floor_ms(by_level, costs, top)
    for name in COSTED:  # the split adds up to the trainer's own counts (encryptions: less those in refreshes)
        if name != "encryptions":
            assert sum(v for (k, _), v in by_level.items() if k == name) == rec.ops[name], name
    return {"shape": (batch, features, classes), "unit": unit, "workers": parallel.workers(),
            "wall": statistics.median(r[0].seconds for r in records),
            "cpu": statistics.median(r[1] for r in records), "rec": rec, "by_level": by_level, "floor": floor / 1e3,
            "floor_parts": {k: v / 1e3 for k, v in parts.items()}, "costs": costs, "top": top,
            "plain_ms": plain_step_ms(batch, classes), "repeats": len(records), "setup": setup, "softmax": softmax}


# --- report -------------------------------------------------------------------------------------------
def _label(r: dict) -> str:
    """The shape, marked when the key owner evaluated the exact softmax (the opt-in protocol)."""
    return f"{r['shape']}" + (" exact softmax" if r.get("softmax") == "exact" else "")


def _levels_text(by_level: dict, name: str) -> str:
    items = sorted(((lvl, n) for (k, lvl), n in by_level.items() if k == name and n), key=lambda t: -(t[0] or 0))
    return " ".join(f"L{lvl}:{n}" for lvl, n in items)


def render(results: list[dict], args: argparse.Namespace, seconds: float, skipped: list) -> str:
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    lines = [
        "# One encrypted training step at HETAL's shapes (preset \"fast\": N=16384, 7 levels, SEAL)",
        "",
        "`python -m benchmarks.train_step`: forward DiagABT, fused softmax-CE, DiagATB backward, SGD Nesterov "
        f"(lr {LR}, momentum {MOMENTUM}), refreshes through the key owner's SecretContext (in-process), on random "
        f"unit-norm features. Time = median over {args.repeats} step(s) after {args.warmup} warm-up step(s). "
        "**Floor** = Σ over (op, level) of count × that op's median CPU cost at that level, measured in the same "
        "run on the same keys (3 runs per op and level; ct·pt mults with a cached mask; a refresh = decrypt at its "
        "level + public-key encrypt at the top). Counts are split by operand level in this script.",
        "",
        "| shape (b, d+1, c) | unit | workers | ours wall s | ours CPU s | floor s | wall/floor | CPU/floor "
        "| plain torch ms (median / min) | ours / torch (min) | HETAL GPU s/step |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        b, d, c = r["shape"]
        hetal = "≈9.46 (MNIST, derived)" if (b, c) == (1024, 10) else "4.29–15.72 (paper range)"
        lines.append(
            f"| ({b}, {d}, {c}) | {r['unit']} | {r.get('workers', 1)} | {r['wall']:.1f} | {r['cpu']:.1f} | "
            f"{r['floor']:.1f} | "
            f"{r['wall'] / r['floor']:.2f} | {r['cpu'] / r['floor']:.2f} | "
            f"{r['plain_ms'][0]:.2f} / {r['plain_ms'][1]:.2f} | "
            f"{1e3 * r['wall'] / r['plain_ms'][1]:,.0f}× | {hetal} |")
    for shape, why in skipped:
        lines.append(f"| {shape} | – | – | not run: {why} | | | | | | | |")
    sections = sorted({k for r in results for k in r["rec"].breakdown})
    lines += ["", "## Breakdown of the step (wall s, by section; other = step − sections)", "",
              "| shape | " + " | ".join(sections) + " | other | total |",
              "|---|" + "---:|" * (len(sections) + 2)]
    for r in results:
        bd = r["rec"].breakdown
        other = r["rec"].seconds - sum(bd.values())
        lines.append(f"| {_label(r)} | " + " | ".join(f"{bd.get(s, 0.0):.2f}" for s in sections)
                     + f" | {other:.2f} | {r['rec'].seconds:.2f} |")
    lines += ["", "## Op counts per step, and their share of the floor", "",
              "| shape | " + " | ".join(SHOWN) + " |", "|---|" + "---:|" * len(SHOWN)]
    for r in results:
        ops = r["rec"].ops
        lines.append(f"| {_label(r)} | " + " | ".join(str(ops.get(k, 0)) for k in SHOWN) + " |")
    lines += ["", "| shape | " + " | ".join(f"{k} floor s" for k in COSTED) + " |", "|---|" + "---:|" * len(COSTED)]
    for r in results:
        lines.append(f"| {_label(r)} | " + " | ".join(f"{r['floor_parts'].get(k, 0.0):.2f}" for k in COSTED) + " |")
    lines += ["", "Counts by operand level (L7 = fresh, L0 = last):", ""]
    for r in results:
        lines.append(f"- {_label(r)}: " + "; ".join(
            f"{k} {_levels_text(r['by_level'], k)}" for k in ["rotations", "conjugations", "ct_ct_mults",
                                                              "ct_pt_mults", "refreshes"]))
    if results:
        costs, top = results[-1]["costs"], results[-1]["top"]
        names = ["rotations", "conjugations", "ct_ct_mults", "relinearizations", "ct_pt_mults", "rescales",
                 "mod_switches", "additions", "refreshes"]
        lines += ["", "## Per-op CPU cost (ms) by operand level, measured in this run (last shape's keys)", "",
                  "| op | " + " | ".join(f"L{lvl}" for lvl in range(top, -1, -1)) + " |",
                  "|---|" + "---:|" * (top + 1)]
        for k in names:
            lines.append(f"| {k} | " + " | ".join(f"{costs[(k, lvl)]:.2f}" for lvl in range(top, -1, -1)) + " |")
    lines += [
        "",
        f"HETAL (HETAL.md §5, HEaaN FGb on a GPU, N=2^16): {HETAL_GPU}.",
        "",
        f"Machine: {platform.machine()}, `nproc` = {os.cpu_count()} cores, Python {platform.python_version()}, "
        "shared with other jobs (noisy: wall includes waiting for a core; CPU time is the step's own cost, "
        f"SEAL is single-threaded). `uptime` at the end: `{uptime}` (load {load})."
        + (f" Total run time {seconds:.0f} s." if seconds else ""),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=[",".join(map(str, s)) for s in SHAPES],
                        help="batch,features,classes (features include the bias column: 769)")
    parser.add_argument("--repeats", type=int, default=1, help="timed steps per shape (median)")
    parser.add_argument("--warmup", type=int, default=0, help="untimed steps first (the first step creates "
                        "the momentum buffers)")
    parser.add_argument("--budget", type=float, default=None, help="skip the remaining shapes after this many s")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--unit", default=None, help="s0,s1 instead of the default unit choice")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: the cores)")
    parser.add_argument("--softmax", nargs="+", choices=["hetal", "exact"], default=["hetal"],
                        help="HETAL's approximate softmax on the server, and/or the key owner's exact one")
    parser.add_argument("--rerender", action="store_true", help="re-render the last run's saved results "
                        "(re-timing only the plain torch step)")
    args = parser.parse_args(argv)
    saved = Path(tempfile.gettempdir()) / "train_step_results.pkl"
    if args.rerender:
        with open(saved, "rb") as f:
            results, skipped = pickle.load(f)
        done = {tuple(r["shape"]) for r in results} | {tuple(sh) for sh, _ in skipped}
        skipped += [(sh, "not run (time)") for sh in SHAPES if sh not in done]
        for r in results:
            r["plain_ms"] = plain_step_ms(r["shape"][0], r["shape"][2])
        args.out.write_text(render(results, args, sum(r.get("seconds", 0.0) for r in results), skipped))
        print(args.out.read_text())
        return
    t0 = time.perf_counter()
    results, skipped = [], []
    for spec in args.shapes:
        shape = tuple(int(v) for v in spec.split(","))
        if args.budget is not None and time.perf_counter() - t0 > args.budget:
            skipped.append((shape, "time budget"))
            continue
        print(f"{shape}:", flush=True)
        unit = tuple(int(v) for v in args.unit.split(",")) if args.unit else None
        for softmax in args.softmax:
            with parallel.use_workers(args.workers or parallel.workers()):
                results.append(bench_shape(*shape, repeats=args.repeats, warmup=args.warmup, unit=unit,
                                           softmax=softmax))
            results[-1]["seconds"] = time.perf_counter() - t0 - sum(r.get("seconds", 0.0) for r in results[:-1])
        with open(saved, "wb") as f:
            pickle.dump((results, skipped), f)  # to re-render without re-running
        text = render(results, args, time.perf_counter() - t0, skipped)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)  # after every shape, so a cut-short run still leaves a table
    print(render(results, args, time.perf_counter() - t0, skipped))


if __name__ == "__main__":
    main()
