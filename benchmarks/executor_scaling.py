"""Ray vs fork on this machine, bytes moved per step, and a scaling model for more cores (#16).

    python -m benchmarks.executor_scaling [--shape 1024,769,10] [--preset fast] [--pairs 2] [--quick]

Part 1 (measured, SEAL). One training step (``benchmarks.scaling.make_step``: forward DiagABT, softmax-CE,
DiagATB, SGD Nesterov, refreshes by the key owner in this process) is run with every share count and
executor in turn, interleaved so that a ratio compares steps taken minutes apart at most: serial (1
core), fork (2 shares) and Ray (a local Ray with 2 CPUs, 2 shares), ``--pairs`` times after a warm-up.
The Ray executor counts the bytes it moves between driver and workers.

Part 2 (model). The same step runs dry on the plaintext backend for each share count N (the shares
the planner cuts for N workers, finer splits included), with a recording executor that counts every
share's ops apart. Predicted step time at N cores =
    serial part (ops outside the shares, refreshes included: the key owner answers one at a time)
  + Σ over maps of the largest share (one share per core)
  + Σ over maps of Ray's cost (a map's scheduling latency, measured; the share function's ciphertexts
    serialized once in the driver and loaded once per worker, per MB measured; sent to every node over
    ``--bandwidth`` GB/s; the results back likewise),
every op priced at its measured CPU cost at its level (``benchmarks.train_step.op_costs``). Efficiency
E(N) = T(1) / (N · T(N)). Writes benchmarks/results/executor_scaling.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import ray

from benchmarks import scaling
from benchmarks import train_step as ts
from encrypted_torch import parallel
from encrypted_torch.ckks import counters
from encrypted_torch.ckks.evaluator import Cipher
from encrypted_torch.ckks.params import get_params
from encrypted_torch.ckks.secret import SecretContext
from encrypted_torch.executors import Executor, SerialExecutor, ray_wire
from encrypted_torch.executors.fork import ForkExecutor
from encrypted_torch.executors.ray_executor import RayExecutor
from encrypted_torch.refresh import refresh_with

RESULTS = Path(__file__).parent / "results" / "executor_scaling.md"
CORES = [1, 2, 4, 8, 16, 32, 64]
SERIAL_OPS = {"refreshes", "encryptions"}  # a share's refreshes are served by the driver, one at a time


class RecordingExecutor(Executor):
    """Runs every share in this process on its own unpickled copy of the share function (as a Ray
    worker would: ``ray_wire``), and keeps, per map, each share's op counts, the levels of the
    ciphertexts it loaded and of those it returned, and the levels of all the function's ciphertexts."""

    name = "record"

    def __init__(self) -> None:
        self.maps: list[dict[str, Any]] = []

    def map(self, ctx: Any, fn: Callable[[Any], list[Cipher]], shares: Sequence[Any], *,
            serve_refreshes: bool = False) -> list[list[Cipher]]:
        packed = ray_wire.dumps(fn, ctx)
        outs, per_share = [], []
        for s in shares:
            copy, lazies = ray_wire.loads_with_ciphers(packed, ctx)
            with counters.count_ops() as ops, contextlib.ExitStack() as stack:
                if not serve_refreshes:
                    stack.enter_context(refresh_with(None))
                out = copy(s)
            outs.append(out)
            per_share.append({"ops": dict(ops.by_level), "loaded": [c.level for c in lazies if c.loaded],
                              "returned": [c.level for c in out]})
        self.maps.append({"shares": per_share, "in_levels": [r[0] for r in packed[1]],
                          "refreshes": serve_refreshes})
        return outs


# --- measured ----------------------------------------------------------------------------------------
def timed_step(setup: Any, executor: Executor, n: int, min_work: int = parallel.MIN_WORK) -> dict[str, Any]:
    """One training step with ``n`` shares on ``executor``: wall and CPU s, bytes Ray moved, op count."""
    stats = getattr(executor, "stats", None)
    maps_before = len(stats.task_seconds) if stats is not None else 0
    with parallel.use_executor(executor), parallel.use_workers(n, min_work=min_work):
        before = _stats(executor)
        t = time.perf_counter()
        out = scaling.run_step(setup)
        wall = time.perf_counter() - t
    moved = {k: v - before.get(k, 0) for k, v in _stats(executor).items()}
    tasks = stats.task_seconds[maps_before:] if stats is not None else []
    return {"wall": wall, "cpu": out["cpu"], "moved": moved, "ops": sum(out["by_level"].values()),
            "task_seconds": tasks}


def _stats(executor: Executor) -> dict[str, int]:
    s = getattr(executor, "stats", None)
    if s is None:
        return {}
    return {k: getattr(s, k) for k in ("context_bytes", "function_bytes", "share_bytes", "result_bytes",
                                       "refresh_bytes", "maps", "tasks")}


def cipher_bytes(secret: Any) -> dict[int, int]:
    """Bytes of one serialized ciphertext at each level (SEAL's own compression)."""
    pub = secret.public()
    ev = pub.evaluator
    c = pub.encrypt_vector(np.random.default_rng(0).uniform(-1, 1, pub.slots))
    return {lvl: len(pub.backend.handle_to_bytes(ev.mod_switch(c, lvl).handle)) for lvl in range(ev.top_level + 1)}


def wire_costs(secret: Any, executor: RayExecutor, repeats: int = 5) -> dict[str, float]:
    """ms per MB to serialize (driver) and load (worker) ciphertexts; a map's latency with trivial shares."""
    pub = secret.public()
    ev = pub.evaluator
    cs = [ev.mod_switch(pub.encrypt_vector(np.full(pub.slots, i / 10)), 2) for i in range(12)]
    with counters.count_ops():  # CPU seconds, as the op costs (the machine may be shared)
        t = time.process_time()
        packed = ray_wire.dumps(lambda s: cs, pub)
        dump = time.process_time() - t
        t = time.process_time()
        _, lazies = ray_wire.loads_with_ciphers(packed, pub)
        for c in lazies:
            c.handle  # noqa: B018 (loads it)
        load = time.process_time() - t
        mb = (len(packed[0]) + sum(map(len, packed[2]))) / 2**20
        executor.map(pub, lambda s: [cs[s % 2]], [0, 1])  # workers hold the context
        lat: dict[int, list[float]] = {2: [], 12: []}
        for _ in range(repeats):
            for n in lat:
                t = time.perf_counter()
                executor.map(pub, lambda s: [cs[s % 2]], list(range(n)))
                lat[n].append(time.perf_counter() - t)
    two, twelve = (statistics.median(lat[n]) for n in (2, 12))
    return {"dump_ms_per_mb": 1e3 * dump / mb, "load_ms_per_mb": 1e3 * load / mb,
            "map_latency_ms": 1e3 * two, "task_ms": max(0.0, 1e3 * (twelve - two) / 10)}


# --- model -------------------------------------------------------------------------------------------
def dry_run(shape: tuple[int, int, int], preset: str, n: int, min_work: int) -> dict[str, Any]:
    """The step's total counts and every map's per-share counts at N shares (plaintext backend)."""
    setup = scaling.make_step(shape, preset, "plain")
    recorder = RecordingExecutor()
    with parallel.use_executor(recorder), parallel.use_workers(n, min_work=min_work):
        total = scaling.run_step(setup)["by_level"]
    return {"total": dict(total), "maps": recorder.maps}


def predict(dry: dict[str, Any], costs: dict, top: int, sizes: dict[int, int], wire: dict[str, float] | None,
            n: int, cores_per_node: int, bandwidth_gbs: float) -> dict[str, float]:
    """Predicted seconds of one step on N cores (Ray's costs if ``wire``), and its parts. A share's time on
    its core = its ops + loading the ciphertexts it touches + serializing its results; the driver
    serializes each map's function and loads the results, one after the other."""
    def mb(levels: list[int]) -> float:
        return sum(sizes[lvl] for lvl in levels) / 2**20

    def ops_ms(by_level: dict) -> float:
        return ts.floor_ms({k: v for k, v in by_level.items() if k[0] not in SERIAL_OPS}, costs, top)[0]

    def share_ms(share: dict) -> float:
        if wire is None:
            return ops_ms(share["ops"])
        return (ops_ms(share["ops"]) + wire["load_ms_per_mb"] * mb(share["loaded"])
                + wire["dump_ms_per_mb"] * mb(share["returned"]))

    total_ms = ts.floor_ms(dry["total"], costs, top)[0]
    inside = sum(ops_ms(s["ops"]) for m in dry["maps"] for s in m["shares"])
    per_map = [[share_ms(s) / 1e3 for s in m["shares"]] for m in dry["maps"]]
    critical = 1e3 * sum(max(shares) for shares in per_map)
    nodes = math.ceil(n / cores_per_node)
    driver = 0.0
    mb_in = sum(mb(m["in_levels"]) for m in dry["maps"])
    if wire is not None:
        for m in dry["maps"]:
            m_in, m_out = mb(m["in_levels"]), sum(mb(s["returned"]) for s in m["shares"])
            network = 0.0 if nodes == 1 else 1e3 * (m_in * nodes + m_out) / 1024 / bandwidth_gbs
            tasks = max(0, len(m["shares"]) - 2) * wire["task_ms"]
            driver += (wire["map_latency_ms"] + tasks + wire["dump_ms_per_mb"] * m_in
                       + wire["load_ms_per_mb"] * m_out + network)
    serial = total_ms - inside
    return {"seconds": (serial + critical + driver) / 1e3, "serial": serial / 1e3, "critical": critical / 1e3,
            "overhead": driver / 1e3, "maps": len(dry["maps"]),
            "shares": max((len(m["shares"]) for m in dry["maps"]), default=1), "mb_in": mb_in,
            "mb_loaded_max": sum(max(mb(s["loaded"]) for s in m["shares"]) for m in dry["maps"]),
            "per_map": per_map}


# --- run ---------------------------------------------------------------------------------------------
def measure(args: argparse.Namespace, shape: tuple[int, int, int], ray_executor: RayExecutor) -> dict[str, Any]:
    """Part 1: interleaved SEAL steps on each executor (preset ``--measure-preset``), Ray's bytes per step."""
    executors = {"serial": (SerialExecutor(), 1), "fork": (ForkExecutor(), 2), "ray": (ray_executor, 2)}
    t0 = time.perf_counter()
    setup = scaling.make_step(shape, args.measure_preset, "seal")
    print(f"keys and data: {time.perf_counter() - t0:.0f} s", flush=True)
    before = ray_executor.stats.context_bytes
    measured: dict[str, list[dict]] = {k: [] for k in executors}
    for name in ("fork", "ray"):  # warm-up (plans, caches; Ray's workers load the keys)
        timed_step(setup, *executors[name], args.min_work)
    for _ in range(args.pairs):
        for name in args.order:
            measured[name].append(timed_step(setup, *executors[name], args.min_work))
            m = measured[name][-1]
            print(f"{name}: wall {m['wall']:.1f} s cpu {m['cpu']:.1f} s moved {m['moved']}", flush=True)
    return {"measured": measured, "context_bytes": ray_executor.stats.context_bytes - before}


def costs_part(args: argparse.Namespace, preset: str, ray_executor: RayExecutor) -> dict[str, Any]:
    """Per-op CPU costs, ciphertext sizes and wire costs on real keys of ``preset`` (one rotation key is
    enough: an op's cost does not depend on how many other keys exist)."""
    light = SecretContext.create(preset, rotations=[1], backend="seal")
    out = {"costs": ts.op_costs(light, repeats=args.cost_repeats), "sizes": cipher_bytes(light),
           "wire": wire_costs(light, ray_executor)}
    print("wire", json.dumps(out["wire"]), flush=True)
    return out


def model_part(args: argparse.Namespace, shape: tuple[int, int, int], part0: dict[str, Any], preset: str,
               cores: list[int]) -> dict[str, Any]:
    """Part 2: dry runs at each N, priced."""
    top = get_params(preset).levels
    model = {}
    for n in cores:
        dry = dry_run(shape, preset, n, args.min_work)
        model[n] = {k: predict(dry, part0["costs"], top, part0["sizes"], wire, n, args.cores_per_node,
                               args.bandwidth) for k, wire in (("fork", None), ("ray", part0["wire"]))}
        print(n, json.dumps(model[n]["ray"]), flush=True)
    return model


def run(args: argparse.Namespace) -> dict[str, Any]:
    shape = tuple(int(v) for v in args.shape.split(","))
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=args.store_mb << 20)
    ray_executor = RayExecutor()
    part0 = costs_part(args, args.preset, ray_executor)
    same = args.measure_preset == args.preset
    part0m = part0 if same else costs_part(args, args.measure_preset, ray_executor)
    part1 = measure(args, shape, ray_executor)
    ray.shutdown()
    model = model_part(args, shape, part0, args.preset, args.cores)
    check = model if same else model_part(args, shape, part0m, args.measure_preset, [1, 2])
    return {"shape": shape, "preset": args.preset, "measure_preset": args.measure_preset, **part1,
            "sizes": part0["sizes"], "wire": part0["wire"], "wire_measured": part0m["wire"], "model": model,
            "check": check, "seconds": time.perf_counter() - t0, "args": vars(args)}


def render(res: dict[str, Any]) -> str:
    m, model, a, wire, check = res["measured"], res["model"], res["args"], res["wire"], res["check"]
    walls = {k: [r["wall"] for r in v] for k, v in m.items()}
    ratios = [r / f for r, f in zip(walls["ray"], walls["fork"], strict=False)]
    speedups = [s / f for s, f in zip(walls["serial"], walls["fork"], strict=False)]
    t1 = model[1]["fork"]["seconds"]
    moved = m["ray"][-1]["moved"] if m["ray"] else {}
    per_step = sum(moved.get(k, 0) for k in ("function_bytes", "share_bytes", "result_bytes", "refresh_bytes"))
    by_level = ", ".join(f"L{k}: {v / 2**20:.2f} MB" for k, v in sorted(res["sizes"].items()))
    lines = [f"# Ray vs fork, and a scaling model, at {tuple(res['shape'])} (SEAL; model on preset "
             f"{res['preset']!r}, measured steps on preset {res['measure_preset']!r})", "",
             "`python -m benchmarks.executor_scaling`: one training step (forward DiagABT, softmax-CE, DiagATB, "
             "SGD Nesterov, refreshes by the key owner in the driver), interleaved "
             f"{' → '.join(a['order'])}, {a['pairs']} round(s) after a warm-up of each.", "",
             "## Measured on this machine (2 cores, shared: ratios within one run count, single walls do not)", "",
             "| executor | shares | wall s (each step) | CPU s (driver + forked children; Ray workers not included) |",
             "|---|---:|---|---|"]
    for name, n in (("serial", 1), ("fork", 2), ("ray", 2)):
        cpu = ", ".join(f"{r['cpu']:.1f}" for r in m[name])
        lines.append(f"| {name} | {n} | {', '.join(f'{w:.1f}' for w in walls[name])} | {cpu} |")
    cpu_ray = [r["cpu"] + sum(map(sum, r["task_seconds"])) for r in m["ray"]]
    cpu_fork = [r["cpu"] for r in m["fork"]]
    cpu_ratios = [r / f for r, f in zip(cpu_ray, cpu_fork, strict=False)]
    lines += ["", f"**Ray / fork CPU ratio** per round (all the step's CPU: Ray's driver + its tasks' CPU in the "
              f"workers, vs fork's driver + children; independent of the load): "
              f"{', '.join(f'{r:.3f}' for r in cpu_ratios)} (Ray {', '.join(f'{c:.1f}' for c in cpu_ray)} s, fork "
              f"{', '.join(f'{c:.1f}' for c in cpu_fork)} s)."]
    lines += ["", f"**Ray / fork wall ratio** per round: {', '.join(f'{r:.3f}' for r in ratios)} "
              f"(median {statistics.median(ratios):.3f}); fork speed-up over serial per round: "
              f"{', '.join(f'{s:.2f}' for s in speedups)}.", "",
              "Bytes moved between driver and Ray workers in one step (the driver's count; Ray copies an object to "
              "a node once and the workers of a node share it):", "",
              "| public context (once per cluster) | share functions' ciphertexts | shares | results | refreshes | "
              "total per step | maps | tasks |", "|---:|---:|---:|---:|---:|---:|---:|---:|",
              f"| {_mb(res['context_bytes'])} | {_mb(moved.get('function_bytes', 0))} | {moved.get('share_bytes', 0)} B"
              f" | {_mb(moved.get('result_bytes', 0))} | {_mb(moved.get('refresh_bytes', 0))} | {_mb(per_step)} | "
              f"{moved.get('maps', 0)} | {moved.get('tasks', 0)} |", "",
              f"Wire costs measured in this run: serialize {wire['dump_ms_per_mb']:.2f} ms/MB, load "
              f"{wire['load_ms_per_mb']:.2f} ms/MB, a map of 2 trivial shares {wire['map_latency_ms']:.1f} ms, "
              f"each further task {wire.get('task_ms', 0):.1f} ms. "
              f"Ciphertext bytes by level: {by_level}.",
              "", "## Model: predicted step time at N cores", "",
              f"Cores per node {a['cores_per_node']}, network {a['bandwidth']} GB/s per link, the driver sending each "
              "map's function to every node. T(1) = the serial step's op-count floor.", "",
              "| cores N | shares per map (max) | maps | MB per step into the maps | MB the busiest shares load "
              "| serial part s | Σ largest share s (Ray: + its loads) | driver's Ray cost s | predicted fork s | "
              "predicted Ray s | Ray speed-up | Ray efficiency |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for n, p in sorted(model.items(), key=lambda kv: int(kv[0])):
        r, f, n = p["ray"], p["fork"], int(n)
        lines.append(f"| {n} | {r['shares']} | {r['maps']} | {r['mb_in']:.0f} | {r['mb_loaded_max']:.0f} | "
                     f"{r['serial']:.2f} | {r['critical']:.2f} | "
                     f"{r['overhead']:.2f} | {f['seconds']:.2f} | {r['seconds']:.2f} | {t1 / r['seconds']:.2f}× | "
                     f"{t1 / (n * r['seconds']):.2f} |")
    lines += ["", f"Validation on the measured preset {res['measure_preset']!r} (its own op costs and dry runs; "
              "measured median wall vs predicted; the op costs are CPU times, so on a shared "
              "machine the wall runs above them by the load: the last column scales the prediction by the "
              "1-core step's measured/predicted, i.e. calibrates at N=1 and predicts N=2):", "",
              "| N | executor | predicted s (CPU costs) | measured wall s (median) | measured / predicted | "
              "calibrated prediction s | measured / calibrated |", "|---:|---|---:|---:|---:|---:|---:|"]
    calib = None
    for n, name in [(1, "serial"), (2, "fork"), (2, "ray")]:
        pred = check[n]["ray" if name == "ray" else "fork"]["seconds"]
        got = statistics.median(walls[name]) if walls[name] else float("nan")
        calib = got / pred if calib is None else calib
        lines.append(f"| {n} | {name} | {pred:.2f} | {got:.2f} | {got / pred:.2f} | {pred * calib:.2f} | "
                     f"{got / (pred * calib):.2f} |")
    if m["ray"] and m["ray"][-1]["task_seconds"]:
        lines += ["", "Per share, independent of the machine's load: CPU seconds of each Ray task in its worker "
                  "(unpickling the function, loading the ciphertexts it touches, its ops, serializing its results) "
                  "in the last Ray step, against the model's share time at N=2 on the measured preset; and the "
                  "driver's CPU seconds in that step against the model's serial part + the driver's Ray cost:", "",
                  "| map | measured task CPU s | predicted s | measured / predicted |", "|---:|---|---|---:|"]
        predicted = check[2]["ray"]["per_map"]
        for i, (got, want) in enumerate(zip(m["ray"][-1]["task_seconds"], predicted, strict=False)):
            lines.append(f"| {i + 1} | {', '.join(f'{g:.2f}' for g in got)} | {', '.join(f'{w:.2f}' for w in want)} "
                         f"| {sum(got) / sum(want):.2f} |")
        r2 = check[2]["ray"]
        driver = statistics.median(r["cpu"] for r in m["ray"])
        lines.append(f"| driver | {driver:.2f} (median) | {r2['serial'] + r2['overhead']:.2f} | "
                     f"{driver / (r2['serial'] + r2['overhead']):.2f} |")
    lines += ["", f"Machine: {platform.machine()}, `nproc` = {os.cpu_count()}, Python {platform.python_version()}; "
              f"`uptime` at the end: `{_uptime()}`. Total run time {res['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="1024,769,10", help="batch,features incl. bias,classes")
    ap.add_argument("--preset", default="fast", help="the model's preset (op costs, sizes, dry runs)")
    ap.add_argument("--measure-preset", default=None, help="the measured steps' preset (default: --preset; "
                    "'test' where the machine has no room for Ray workers holding N=16384 keys)")
    ap.add_argument("--pairs", type=int, default=2, help="rounds of interleaved steps")
    ap.add_argument("--order", nargs="+", default=["fork", "ray", "serial"])
    ap.add_argument("--cores", type=int, nargs="+", default=CORES, help="core counts the model predicts (1 and 2 "
                    "are needed for the validation)")
    ap.add_argument("--cost-repeats", type=int, default=3)
    ap.add_argument("--cores-per-node", type=int, default=8)
    ap.add_argument("--bandwidth", type=float, default=1.25, help="GB/s between nodes (10 GbE)")
    ap.add_argument("--store-mb", type=int, default=1024, help="Ray's object store on this machine")
    ap.add_argument("--min-work", type=int, default=parallel.MIN_WORK, help="block products worth a share")
    ap.add_argument("--quick", action="store_true", help="a tiny shape on the 'test' preset (a smoke run)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--rerender", type=Path, default=None, help="render a saved executor_scaling.json again")
    args = ap.parse_args(argv)
    if args.rerender is not None:
        res = json.loads(args.rerender.read_text())
        res["model"] = {int(k): v for k, v in res["model"].items()}
        res["check"] = {int(k): v for k, v in res["check"].items()}
        args.out.write_text(render(res))
        print(render(res))
        return
    if args.quick:
        args.shape, args.preset, args.pairs, args.cost_repeats, args.store_mb = "256,65,3", "test", 1, 1, 256
        args.min_work = 0
    args.measure_preset = args.measure_preset or args.preset
    res = run(args)
    (args.out.parent / "executor_scaling.json").write_text(json.dumps(res, default=str, indent=1))
    args.out.write_text(render(res))
    print(render(res))


if __name__ == "__main__":
    main()
