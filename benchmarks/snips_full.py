"""HETAL's SNIPS experiment at full size, client and server as two processes over an emulated link.

    python -m benchmarks.snips_full                      # HETAL's softmax, over 100 Mbit/s + 20 ms
    python -m benchmarks.snips_full --softmax exact      # the key owner's exact softmax (opt-in protocol)

13,084 / 700 / 700 utterances (``../shared/data/snips`` or ``--data-dir``), 7 intents, MiniLM features
(the ``text`` extra), HETAL's hyperparameters: batch 1024, lr 1.0, Nesterov momentum 0.9, up to 14
epochs with early stopping on the validation split (the key owner's verdicts). The server
(``python -m encrypted_torch.server``) and the client (``python -m encrypted_torch.client``, the
command a user runs) are separate processes; every byte between them, upload included, crosses
``benchmarks.relay``'s link (``--link loopback`` for none). Reports the encrypted model's test
accuracy against the plaintext twin's (the same training in torch with the exact softmax, the same
splits, initial weights and batch order), epochs to the early stop, total and per-step time, bytes
each way, round trips and refreshes, and the peak RSS of both processes. Writes
benchmarks/results/snips_full_<softmax>.json and prints a Markdown row.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.relay import RelayThread, parse_link
from encrypted_torch.hetal.config import HetalConfig
from encrypted_torch.hetal.plaintext import accuracy, train_plaintext
from encrypted_torch.hetal.prepare import load_features, normalise
from encrypted_torch.nn.linear import Linear

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
HETAL_SNIPS = {"n_train": 13084, "n_val": 700, "n_test": 700, "batch_size": 1024, "lr": 1.0, "epochs": 14}
SETTINGS = dict(HETAL_SNIPS)  # --smoke shrinks it to check the harness in a few minutes


def _args(softmax: str, data_dir: str | None) -> list[str]:
    out = ["--dataset", "snips", "--softmax", "default" if softmax == "hetal" else softmax]
    for k, v in SETTINGS.items():
        out += [f"--{k.replace('_', '-')}", str(v)]
    return out + (["--data-dir", data_dir] if data_dir else [])


def _peak_rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process and of its reaped children (the forked workers), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def plaintext_twin(cfg: HetalConfig) -> dict[str, Any]:
    """The same training in torch (exact softmax), as ``hetal.pipeline.run`` makes its twin."""
    splits = load_features(cfg)
    (xtr, ytr), (xva, yva), (xte, yte) = splits.train, splits.val, splits.test
    xtr, xva, xte = normalise(xtr, xva, xte)
    torch.manual_seed(cfg.seed)
    init = Linear(xtr.shape[1], splits.num_classes, init=cfg.init).packed_plain().clone()
    order = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(cfg.seed))
    plain = train_plaintext(cfg, xtr, ytr, xva, yva, splits.num_classes, init, order)
    return {"test_accuracy": accuracy(plain.model, xte, yte), "best_epoch": plain.best_epoch,
            "epochs_run": plain.epochs_run}


def run(softmax: str, link_spec: str, workdir: Path, data_dir: str | None) -> dict[str, Any]:
    env = {**os.environ, "ENCRYPTED_TORCH_TOKEN": secrets.token_hex(16), "PYTHONPATH": str(REPO)}
    shutil.rmtree(workdir, ignore_errors=True)  # a client workdir that exists would resume an old session
    workdir.mkdir(parents=True)
    server = subprocess.Popen([sys.executable, "-m", "encrypted_torch.server", "--port", "0", "--workdir",
                               str(workdir / "server"), "--log-level", "WARNING"], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline() if server.stdout else ""
        if "listening on" not in line:
            raise RuntimeError(f"the server did not start: {line!r}")
        port = int(line.rsplit(":", 1)[1])
        link = parse_link(link_spec)
        with RelayThread(("127.0.0.1", port), [] if link.direct else [link]) as relays:
            url = f"ws://127.0.0.1:{port if link.direct else relays.ports[0]}"
            report_path = workdir / "report.json"
            cmd = [sys.executable, "-m", "encrypted_torch.client", "--server", url,
                   "--workdir", str(workdir / "client"), *_args(softmax, data_dir), "--report", str(report_path)]
            start = time.perf_counter()
            client = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            peak_client, cpu = 0.0, {"client": 0.0, "server": 0.0}
            while client.poll() is None:
                peak_client = max(peak_client, _peak_rss_mib(client.pid))
                cpu = {"client": _cpu_seconds(client.pid), "server": _cpu_seconds(server.pid)}
                time.sleep(1.0)
            total = time.perf_counter() - start
            out, err = client.communicate()
            if client.returncode != 0:
                raise RuntimeError(f"the client failed ({client.returncode}):\n{err[-3000:]}")
            stats = None if link.direct else relays.relays[0].stats
        peak_server = _peak_rss_mib(server.pid)
    finally:
        server.terminate()
        server.wait(30)
    report = json.loads(report_path.read_text())
    summary = report["server"]
    record = json.loads((workdir / "client" / "client.json").read_text())
    twin = plaintext_twin(HetalConfig(**record["config"]))  # the client's own resolved settings
    return {"softmax": softmax, "link": link_spec, "test_accuracy": report["test_accuracy"],
            "plaintext_test_accuracy": twin["test_accuracy"], "twin_epochs_run": twin["epochs_run"],
            "best_epoch": report["best_epoch"], "epochs_run": summary["epochs_run"],
            "stopped_epoch": summary["stopped_epoch"], "steps": summary["steps"],
            "seconds_per_step": summary["seconds_per_step"], "training_seconds": summary["run_seconds"],
            "total_seconds": round(total, 1), "refreshes_per_step": summary["refreshes_per_step"],
            "key_owner_round_trips": summary["key_owner_round_trips"],
            "server_bytes_sent": summary["bytes_sent"], "server_bytes_received": summary["bytes_received"],
            "link_bytes_client_to_server": stats.c2s.bytes if stats else None,
            "link_bytes_server_to_client": stats.s2c.bytes if stats else None,
            "peak_rss_mib": {"client": round(peak_client), "server": round(peak_server)},
            "cpu_seconds": {k: round(v, 1) for k, v in cpu.items()},  # wall time depends on the machine's load
            "history": report["history"], "client_stdout_tail": out[-2000:]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.snips_full", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--softmax", choices=["hetal", "exact"], default="hetal")
    ap.add_argument("--link", default="100mbit:20ms", help="RATE:DELAY (one way) or 'loopback'")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/snips_full"))
    ap.add_argument("--data-dir", help="SNIPS directory (default: ../shared/data/snips)")
    ap.add_argument("--smoke", action="store_true", help="2,048 training rows and 1 epoch: check the harness")
    args = ap.parse_args(argv)
    if args.smoke:
        SETTINGS.update(n_train=2048, epochs=1)
    res = run(args.softmax, args.link, args.workdir / args.softmax, args.data_dir)
    RESULTS.mkdir(exist_ok=True)
    if not args.smoke:
        (RESULTS / f"snips_full_{args.softmax}.json").write_text(json.dumps(res, indent=1))
    gb = lambda n: f"{n / 1e9:.2f} GB" if n is not None else "–"  # noqa: E731
    print(f"| SNIPS full ({args.softmax} softmax, {args.link}) | {res['test_accuracy']:.4f} | "
          f"{res['plaintext_test_accuracy']:.4f} | {res['epochs_run']} (best {res['best_epoch'] + 1}) | "
          f"{res['total_seconds'] / 60:.1f} min ({res['seconds_per_step']:.1f} s/step) | "
          f"{gb(res['link_bytes_client_to_server'])} ↑ {gb(res['link_bytes_server_to_client'])} ↓ | "
          f"{res['refreshes_per_step']:.1f} | {res['key_owner_round_trips']} |")


if __name__ == "__main__":
    main()
