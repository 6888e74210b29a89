"""Streaming at scale: a HETAL-MNIST-shaped run streamed from disk on both sides (issue #14, item 4).

    python -m benchmarks.scale_stream --rows 4096                       # one full epoch
    python -m benchmarks.scale_stream --rows 52500 --max-steps 3        # HETAL's MNIST size, 3 steps

Random unit-norm rows of 768 features (the model's bias column makes the (1024, 769, 10) step),
labels from a fixed random linear map (10 classes), generated batch by batch from ``--seed``
(never the whole matrix). The client (this process) makes keys (preset "fast", SEAL), encrypts
each batch straight to its disk (``client.encrypt_data.encrypt_dataset_to_disk``), starts a real
``python -m encrypted_torch.server`` and drives it through ``RemoteSession``: upload (files
streamed from disk), training (the server reads one batch at a time, ``storage.DiskDataset``),
the key owner's refreshes and epoch verdict, then the model fetched back.

Reports encryption time and rows/s, bytes on disk per row and in all (both sides), upload time,
the server's step times and the epoch time (measured when the epoch ran in full, else the
measured steps' mean × batches + the measured validation pass: ``epoch_time_kind`` says which),
and peak memory of both processes per phase: the kernel's VmHWM of the main process (reset per
phase through /proc/PID/clear_refs) and, sampled every ``--sample`` s, the PSS summed over the
process and its forked workers; and each side's CPU seconds per phase (its own and its reaped
workers'), which on a shared machine says more than wall time. Writes benchmarks/results/scale_stream-<rows>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from encrypted_torch.ckks.secret import SecretContext
from encrypted_torch.client.encrypt_data import encrypt_dataset_to_disk
from encrypted_torch.client.key_owner import KeyOwner
from encrypted_torch.client.remote import RemoteSession
from encrypted_torch.hetal.prepare import decrypt_linear, rotation_steps
from encrypted_torch.nn.linear import Linear
from encrypted_torch.training.early_stopping import EarlyStopping
from encrypted_torch.training.unit_choice import choose_unit

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
FEATURES, CLASSES, PRESET = 768, 10, "fast"
MiB = 1 << 20


# --- rows, generated batch by batch ------------------------------------------------------------------------------

def projection(seed: int) -> torch.Tensor:
    """The fixed random map whose argmax labels the rows (so the task is learnable)."""
    return torch.randn(FEATURES, CLASSES, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def row_batches(rows: int, batch: int, seed: int, stream: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``rows`` unit-norm rows in batches of ``batch``; batch k depends only on (seed, stream, k)."""
    proj = projection(seed)
    for k, start in enumerate(range(0, rows, batch)):
        g = torch.Generator().manual_seed(seed * 1_000_003 + stream * 10_007 + k)
        x = torch.randn(min(batch, rows - start), FEATURES, generator=g, dtype=torch.float64)
        x = x / x.norm(dim=1, keepdim=True)
        yield x, (x @ proj).argmax(1)


# --- memory of a process tree ------------------------------------------------------------------------------------

def _status(pid: int, field: str) -> int:
    """A ``VmXXX:`` field of /proc/PID/status in bytes (0 if the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def _pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def children_map() -> dict[int, list[int]]:
    """Each process's children, from /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    return children


def tree(root: int, children: dict[int, list[int]], exclude: set[int]) -> list[int]:
    """``root`` and its descendants (the fork executor's workers), without the subtrees of ``exclude``
    (the server is the client's child, but is measured on its own)."""
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(c for c in children.get(pid, []) if c not in exclude)
    return out


def cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` and its waited-for children (user + system), from /proc/PID/stat."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime


def reset_hwm(pid: int) -> bool:
    """Reset the kernel's peak-RSS counter of ``pid`` (Linux ≥ 4.0); False if not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class MemoryWatch:
    """Per phase and per side (client, server): VmHWM of the main process and sampled peaks of its
    RSS and of the PSS summed over its process tree."""

    def __init__(self, pids: dict[str, int], interval: float) -> None:
        self.pids, self.interval = dict(pids), interval
        self.phases: dict[str, dict[str, dict[str, float]]] = {}
        self._phase: str | None = None
        self._started = 0.0
        self._cpu: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def add(self, side: str, pid: int) -> None:
        with self._lock:
            self.pids[side] = pid
            if self._phase is not None:
                self.phases[self._phase][side] = {"rss_peak_mib": 0.0, "tree_pss_peak_mib": 0.0}
                self._cpu[side] = cpu_seconds(pid)

    def begin(self, phase: str) -> None:
        self.end()
        with self._lock:
            for pid in self.pids.values():
                reset_hwm(pid)
            self._phase, self._started = phase, time.perf_counter()
            self._cpu = {side: cpu_seconds(pid) for side, pid in self.pids.items()}
            self.phases[phase] = {side: {"rss_peak_mib": 0.0, "tree_pss_peak_mib": 0.0} for side in self.pids}
        self._sample()

    def end(self) -> None:
        with self._lock:
            if self._phase is None:
                return
            self._sample_locked()
            rec = self.phases[self._phase]
            for side, pid in self.pids.items():
                rec[side]["vmhwm_mib"] = round(_status(pid, "VmHWM") / MiB, 1)
                rec[side]["rss_end_mib"] = round(_status(pid, "VmRSS") / MiB, 1)
                rec[side]["cpu_seconds"] = round(cpu_seconds(pid) - self._cpu.get(side, 0.0), 2)
            rec["seconds"] = round(time.perf_counter() - self._started, 2)  # type: ignore[assignment]
            self._phase = None

    def close(self) -> None:
        self.end()
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        with self._lock:
            self._sample_locked()

    def _sample_locked(self) -> None:
        if self._phase is None:
            return
        rec, children = self.phases[self._phase], children_map()
        for side, pid in self.pids.items():
            r, others = rec[side], set(self.pids.values()) - {pid}
            pss = sum(_pss(p) for p in tree(pid, children, others))
            r["rss_peak_mib"] = max(r["rss_peak_mib"], round(_status(pid, "VmRSS") / MiB, 1))
            r["tree_pss_peak_mib"] = max(r["tree_pss_peak_mib"], round(pss / MiB, 1))


# --- the server process ------------------------------------------------------------------------------------------

def start_server(workdir: Path, token_file: Path, log: Path) -> tuple[subprocess.Popen, int]:
    """``python -m encrypted_torch.server`` on a free loopback port; waits until it listens."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    cmd = [sys.executable, "-m", "encrypted_torch.server", "--port", "0", "--workdir", str(workdir),
           "--token-file", str(token_file), "--max-session-gb", "40", "--max-disk-gb", "40"]
    stderr = open(log, "ab")  # noqa: SIM115 (the child owns it)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, env=env, cwd=ROOT, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline()
            if "listening on" in line:
                return proc, int(line.rsplit(":", 1)[1])
    proc.kill()
    raise RuntimeError(f"the server did not start (exit {proc.poll()}); see {log}")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def du(path: Path) -> int:
    """Bytes of the regular files under ``path``."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def git_state() -> str:
    """The commit the code ran at, with "+dirty" when the tree has changes (a shared tree often has)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def loadavg() -> list[float]:
    return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]


# --- the run -----------------------------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.workdir) / f"rows-{args.rows}"
    shutil.rmtree(work, ignore_errors=True)
    client_dir, server_dir = work / "client", work / "server"
    client_dir.mkdir(parents=True, mode=0o700)
    server_dir.mkdir(mode=0o700)
    token_file = work / "token"
    token_file.write_text(secrets.token_hex(32))
    token_file.chmod(0o600)
    batches = -(-args.rows // args.batch_size)
    out: dict[str, Any] = {
        "benchmark": "scale_stream", "rows": args.rows, "val_rows": args.val_rows, "features": FEATURES,
        "step_shape": [args.batch_size, FEATURES + 1, CLASSES], "classes": CLASSES, "batch_size": args.batch_size,
        "batches": batches, "preset": PRESET, "seed": args.seed, "max_steps": args.max_steps,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "loadavg_start": loadavg()},
        "code": git_state(),
    }
    watch = MemoryWatch({"client": os.getpid()}, args.sample)
    proc = None
    try:
        watch.begin("keygen")
        t0 = time.perf_counter()
        unit = choose_unit(args.batch_size, FEATURES + 1, CLASSES, PRESET)
        secret = SecretContext.create(PRESET, rotations=rotation_steps(unit, CLASSES))
        owner = KeyOwner(secret, EarlyStopping(patience=3))
        out["keygen_seconds"] = round(time.perf_counter() - t0, 2)
        out["unit"] = list(unit)

        enc: dict[str, Any] = {}
        for role, rows, stream, keep in (("train", args.rows, 0, False), ("val", args.val_rows, 1, True)):
            watch.begin(f"encrypt_{role}")
            t0 = time.perf_counter()
            manifest = encrypt_dataset_to_disk(owner, row_batches(rows, args.batch_size, args.seed, stream),
                                               client_dir / role, num_classes=CLASSES, name=role,
                                               keep_labels=keep, unit=unit)
            seconds = time.perf_counter() - t0
            on_disk = du(client_dir / role)
            enc[role] = {"rows": rows, "batches": len(manifest.batches), "seconds": round(seconds, 2),
                         "rows_per_second": round(rows / seconds, 2),
                         "seconds_per_batch": round(seconds / len(manifest.batches), 3),
                         "bytes": on_disk, "bytes_per_row": round(on_disk / rows),
                         "files": len(manifest.files())}
            print(f"encrypted {role}: {rows} rows in {seconds:.1f} s, {on_disk / 2**30:.2f} GiB", flush=True)
        out["encrypt"] = enc

        watch.begin("server_start")
        proc, port = start_server(server_dir, token_file, work / "server.log")
        watch.add("server", proc.pid)
        steps: list[dict[str, float]] = []
        last = [time.perf_counter()]

        def progress(p: Any) -> None:
            now = time.perf_counter()
            steps.append({"epoch": p.epoch, "step": p.step, "server_seconds": p.info.get("seconds"),
                          "refreshes": p.info.get("refreshes"), "wall_between_progress": round(now - last[0], 3)})
            last[0] = now
            print(f"step {len(steps)}: {p.info}", flush=True)

        session = RemoteSession(f"ws://127.0.0.1:{port}", token_file.read_text(), owner, on_progress=progress,
                                timeout=1800)
        session.connect()
        watch.begin("upload")
        t0 = time.perf_counter()
        session.upload(client_dir / "train", client_dir / "val")
        seconds = time.perf_counter() - t0
        sent = du(client_dir / "train") + du(client_dir / "val")
        context = sum(p.stat().st_size for p in server_dir.rglob("public_context.et"))  # sent first
        out["upload"] = {"seconds": round(seconds, 2), "dataset_bytes": sent, "public_context_bytes": context,
                         "mib_per_second": round((sent + context) / MiB / seconds, 1)}
        print(f"uploaded {sent / 2**30:.2f} GiB in {seconds:.1f} s", flush=True)

        torch.manual_seed(args.seed)
        model = Linear(FEATURES, CLASSES, init="zeros").encrypt(owner.public_context, unit=unit)
        job = {"model": "hetal-linear", "in_features": FEATURES, "out_features": CLASSES, "bias": True,
               "optimizer": "nesterov", "lr": args.lr, "momentum": 0.9, "epochs": 1, "max_steps": args.max_steps,
               "seed": args.seed, "checkpoint_every": 1, "softmax": "default"}
        watch.begin("train")
        t0 = last[0] = time.perf_counter()
        summary = session.train(job, {"weight_bias": model.weight_bias.detach()})
        train_wall = time.perf_counter() - t0
        watch.begin("fetch")
        decrypt_linear(session.fetch_model(), secret, FEATURES)
        session.close()
        watch.end()

        done = summary["steps"]
        step_sum = sum(s["server_seconds"] for s in steps)
        validation = summary["run_seconds"] - step_sum  # the validation pass, epoch verdict, checkpoints
        step_wall = [s["wall_between_progress"] for s in steps[1:]]  # the first includes StartTraining's setup
        out["train"] = {
            "steps": done, "server_summary": summary, "step_records": steps,
            "seconds_per_step": summary["seconds_per_step"],
            "wall_seconds_per_step": round(sum(step_wall) / len(step_wall), 3) if step_wall else None,
            "validation_and_epoch_end_seconds": round(validation, 2), "client_wall_seconds": round(train_wall, 2),
            "history": owner.history,
        }
        if done >= batches:
            out["epoch_seconds"], out["epoch_time_kind"] = summary["run_seconds"], "measured"
        else:
            per_step = out["train"]["wall_seconds_per_step"] or summary["seconds_per_step"]
            out["epoch_seconds"] = round(per_step * batches + validation, 1)
            out["epoch_time_kind"] = (f"extrapolated: {done} of {batches} steps measured, mean wall s/step × "
                                      f"{batches} + the measured validation pass")
        out["disk"] = {"client_bytes": du(client_dir / "train") + du(client_dir / "val"),
                       "server_session_bytes": du(server_dir),
                       "client_train_bytes_per_row": round(du(client_dir / "train") / args.rows)}
    finally:
        if proc is not None:
            stop_server(proc)
        watch.close()
        out["memory"] = watch.phases
        out["machine"]["loadavg_end"] = loadavg()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return out


def peak(result: dict[str, Any], side: str, key: str = "vmhwm_mib") -> float:
    """The largest per-phase value of ``key`` on ``side`` over the run."""
    return max((rec[side][key] for rec in result["memory"].values() if side in rec), default=0.0)


def table(results: list[dict[str, Any]]) -> str:
    """The markdown table of docs/performance.md ("Streaming at scale") from result files."""
    head = ("| rows (batches) | encrypt: wall s (rows/s) · client CPU s | disk: client GiB (bytes/row) · server GiB | "
            "upload: wall s · CPU s client/server | step: server s · wall s | epoch s | "
            "peak RSS GiB: client · server |\n|---|---|---|---|---|---|---|")
    lines = [head]
    gib = 2**30
    for r in sorted(results, key=lambda r: r["rows"]):
        m, e, u, t = r["memory"], r["encrypt"]["train"], r["upload"], r["train"]
        measured = r["epoch_time_kind"] == "measured"
        wall = "–" if t["wall_seconds_per_step"] is None else f"{t['wall_seconds_per_step']:.1f}"
        epoch = f"{r['epoch_seconds']:.0f} (measured)" if measured else f"≈ {r['epoch_seconds']:.0f} (extrapolated)"
        lines.append(
            f"| {r['rows']:,} ({r['batches']}) | {e['seconds']:.0f} ({e['rows_per_second']:.0f}) · "
            f"{m['encrypt_train']['client']['cpu_seconds']:.0f} | {r['disk']['client_bytes'] / gib:.2f} "
            f"({r['disk']['client_train_bytes_per_row']:,}) · {r['disk']['server_session_bytes'] / gib:.2f} | "
            f"{u['seconds']:.0f} · {m['upload']['client']['cpu_seconds']:.0f}/"
            f"{m['upload']['server']['cpu_seconds']:.0f} | {t['seconds_per_step']:.1f} · "
            f"{wall} | {epoch} | {peak(r, 'client') / 1024:.2f} · "
            f"{peak(r, 'server') / 1024:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.scale_stream", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=4096, help="training rows (HETAL's MNIST: 52500)")
    ap.add_argument("--val-rows", type=int, default=1024, help="validation rows (labels kept by the key owner)")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--max-steps", type=int, help="train at most this many steps (default: one full epoch)")
    ap.add_argument("--lr", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sample", type=float, default=1.0, help="seconds between memory samples")
    ap.add_argument("--workdir", default="/tmp/scale_stream", help="where both sides' files go (removed after)")
    ap.add_argument("--keep", action="store_true", help="keep the files")
    ap.add_argument("--out", type=Path, help="results JSON (default benchmarks/results/scale_stream-<rows>.json)")
    ap.add_argument("--table", type=Path, nargs="+", help="print the markdown table of these result files and exit")
    args = ap.parse_args(argv)
    if args.table:
        print(table([json.loads(p.read_text()) for p in args.table]))
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run's cleanup stops the server and removes files
    result = run(args)
    path = args.out or RESULTS / f"scale_stream-{args.rows}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result.get(k) for k in ("rows", "epoch_seconds", "epoch_time_kind")}), flush=True)
    print(f"wrote {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
