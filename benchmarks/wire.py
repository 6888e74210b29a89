"""What one training step costs on the wire, and over emulated links (issue #14, item 1).

The full table (every cut × every link, at HETAL's MNIST shape (1024, 769, 10); about 11 minutes
per cut configuration on 2 idle cores, an hour for the default five):

    python -m benchmarks.wire

which is the same as

    python -m benchmarks.wire --cuts none seeded trim all all+exact \
        --links loopback 1gbit:1ms 100mbit:20ms 20mbit:40ms --dataset synthetic --shape 1024,769,10

(the default ``--cuts`` are none, each cut ``encrypted_torch.protocol.wire.CUTS`` knows, all, and
all+exact). On a busy machine add ``--bracket``: a second loopback session after the links, and
the ratios taken over the mean of both loopback steps.

A quick check (a few minutes): ``python -m benchmarks.wire --cuts none --links loopback 100mbit:20ms
--dataset digits``.

For each cut configuration it starts ``python -m encrypted_torch.server`` with
ENCRYPTED_TORCH_WIRE_CUTS set to it (``none``, ``all``, or a comma list of cuts such as
``seeded,trim``; a ``+exact`` suffix makes the job's softmax ``exact``: the key owner's exact softmax),
one relay per emulated link (``benchmarks.relay``: rate and one-way delay per direction), and
``python -m benchmarks.wire_client``, which makes keys and encrypted data once and trains one
session per link (uploads go straight to the server; training goes over the link). Everything runs
inside a network namespace of its own (``unshare -rn``, only its loopback; ``--no-netns`` to run on
the host's loopback instead). Per step (median over steps 2..N; step 1 is reported in the JSON):
bytes each way as the protocol's channel counts them, round trips to the key owner, ciphertexts sent
to the key owner and back with their levels, the server's step time and its ratio to the same cut's
loopback step, and a model of the wire's share (bytes·8/rate + round trips·RTT). One-off costs: the
public context's bytes and the upload's bytes per row. Link ``RATE:DELAY``: DELAY is one way (RTT =
2·DELAY). Writes benchmarks/results/wire.json and wire.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import secrets
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.relay import Link, RelayThread, parse_link

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parent.parent
DEFAULT_LINKS = ["loopback", "1gbit:1ms", "100mbit:20ms", "20mbit:40ms"]
CUTS_ENV = "ENCRYPTED_TORCH_WIRE_CUTS"
BRACKET = Link("loopback-end", direct=True)  # --bracket: loopback again after the links
EXACT = "exact"  # the job's softmax for the opt-in protocol where the key owner evaluates the exact softmax


def known_cuts() -> tuple[str, ...]:
    """The cuts the library knows (``encrypted_torch.protocol.wire.CUTS``); () before it had any."""
    try:
        from encrypted_torch.protocol.wire import CUTS
    except ImportError:
        return ()
    return tuple(CUTS)


def default_cuts() -> list[str]:
    """none, each cut alone, all of them, and all of them with the exact-softmax protocol."""
    return ["none", *known_cuts(), "all", f"all+{EXACT}"]


def parse_cut(spec: str) -> tuple[str, bool]:
    """``all+exact`` → ("all", True): the ENCRYPTED_TORCH_WIRE_CUTS value and whether the job uses
    the key owner's exact softmax (job ``softmax: "exact"``)."""
    cuts, _, extra = spec.partition("+")
    if extra not in ("", EXACT):
        raise ValueError(f"cut configuration {spec!r}: the only suffix is '+{EXACT}'")
    names = [c for c in cuts.split(",") if c]
    known = known_cuts()
    if names not in (["none"], ["all"]) and not (names and (not known or set(names) <= set(known))):
        raise ValueError(f"cut configuration {spec!r}: 'none', 'all' or a comma list of {', '.join(known)}")
    return ",".join(names), bool(extra)


def _start_server(env: dict[str, str], workdir: Path, log: Path, timeout: float = 120.0) -> tuple[subprocess.Popen,
                                                                                                    int]:
    proc = subprocess.Popen([sys.executable, "-m", "encrypted_torch.server", "--port", "0", "--workdir",
                             str(workdir), "--log-level", "WARNING", "--reply-timeout", "1800",
                             "--idle-timeout", "1800"],
                            stdout=subprocess.PIPE, stderr=log.open("wb"), env=env, cwd=REPO, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if ready:
            line = proc.stdout.readline()
            if "listening on" in line:
                return proc, int(line.rsplit(":", 1)[1])
            if not line:
                break
        if proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"the server did not start; see {log}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def run_cut(spec: str, links: list[Link], args: argparse.Namespace, token: str, scratch: Path) -> dict[str, Any]:
    """One cut configuration: a server with the cuts, a relay per link, one client session per link."""
    cuts, exact = parse_cut(spec)
    work = scratch / spec.replace(",", "_").replace("+", "_")
    work.mkdir(parents=True)
    env = {**os.environ, CUTS_ENV: cuts, "ENCRYPTED_TORCH_TOKEN": token, "PYTHONUNBUFFERED": "1"}
    server, port = _start_server(env, work / "server", work / "server.log")
    relayed = [link for link in links if not link.direct]
    try:
        with RelayThread(("127.0.0.1", port), relayed) as relays:
            relay_port = dict(zip([link.name for link in relayed], relays.ports, strict=True))
            cmd = [sys.executable, "-m", "benchmarks.wire_client", "--direct", f"ws://127.0.0.1:{port}",
                   "--report", str(work / "client.json"), "--workdir", str(work), "--dataset", args.dataset,
                   "--epochs", str(args.epochs), "--n-val", str(args.n_val), "--preset", args.preset]
            for link in links + ([BRACKET] if args.bracket else []):
                cmd += ["--session", f"{link.name}=ws://127.0.0.1:{port if link.direct else relay_port[link.name]}"]
            if args.shape:
                cmd += ["--shape", args.shape]
            if args.n_train:
                cmd += ["--n-train", str(args.n_train)]
            if args.upload_over_link:
                cmd.append("--upload-over-link")
            if args.keep_events:
                cmd.append("--keep-events")
            if exact:
                cmd += ["--softmax", EXACT]
            for opt in args.job_option:
                cmd += ["--job-option", opt]
            print(f"[{spec}] server on port {port}; client: {' '.join(cmd[1:])}", flush=True)
            t0 = time.perf_counter()
            done = subprocess.run(cmd, env=env, cwd=REPO, timeout=args.timeout)
            if done.returncode != 0:
                log = (work / "server.log").read_text(errors="replace").splitlines()[-15:]
                raise RuntimeError(f"cut {spec!r}: the client exited with {done.returncode}; the server's log ends:\n"
                                   + "\n".join(log))
            report = json.loads((work / "client.json").read_text())
            report["cut"], report["exact_softmax"], report["wall_seconds"] = spec, exact, time.perf_counter() - t0
            for link, relay in zip(relayed, relays.relays, strict=True):
                report["sessions"][link.name]["relay"] = {"c2s_tcp_bytes": relay.stats.c2s.bytes,
                                                          "s2c_tcp_bytes": relay.stats.s2c.bytes,
                                                          "late_chunks": relay.stats.c2s.late_chunks
                                                          + relay.stats.s2c.late_chunks,
                                                          "max_late_s": max(relay.stats.c2s.max_late_s,
                                                                            relay.stats.s2c.max_late_s),
                                                          "late_s": relay.stats.c2s.late_s + relay.stats.s2c.late_s}
    finally:
        _stop(server)
    if not args.keep_scratch:
        shutil.rmtree(work, ignore_errors=True)
    return report


def wire_model_seconds(link: Link, per_step: dict[str, Any]) -> float | None:
    """The wire's share of a step if transfers and round trips do not overlap compute or each other."""
    if link.direct or not per_step:
        return None
    nbytes = per_step.get("c2s_bytes", 0) + per_step.get("s2c_bytes", 0)
    return (nbytes * 8 / link.rate_bps if link.rate_bps else 0.0) + per_step.get("round_trips", 0) * link.rtt_s


def _mb(n: float | None) -> str:
    return "–" if n is None else f"{n / 1e6:.2f}"


def _sec(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def _num(x: float | None) -> str:
    return "–" if x is None else f"{x:g}"


def _levels(d: dict[str, int]) -> str:
    return ", ".join(f"L{k}×{v}" for k, v in sorted(d.items(), key=lambda kv: int(kv[0]))) or "–"


def markdown(results: list[dict[str, Any]], links: list[Link], meta: dict[str, Any]) -> str:
    """The link × cut table and the one-off costs."""
    shape = tuple(results[0]["shape"]) if results else meta["shape"]
    out = [f"# Wire cost of one step ({meta['dataset']}, (batch, features + 1, classes) = {shape})", "",
           f"{meta['date']}, {meta['machine']}; command: `{meta['command']}`.", "",
           "Per step: median over steps 2..N of each session. MB as the protocol's channel counts them "
           "(sealed messages). Step s: the server's step time (waits for the key owner included); key owner s: "
           "the client's time from each request to its reply. "
           "× loopback: over the same cut's loopback step, measured in the same run. Wire model: "
           "bytes·8/rate + round trips·RTT (no overlap). RTT = 2 × the one-way delay.", "",
           "| cut | link | MB client→server | MB server→client | round trips | ciphers to key owner (levels) "
           "| ciphers back (levels) | step s | key owner s | × loopback | wire model s |",
           "|---|---|---:|---:|---:|---|---|---:|---:|---:|---:|"]
    for r in results:
        if "error" in r:
            out.append(f"| {r['cut']} | failed: {r['error'].splitlines()[0][:80]} |" + " |" * 9)
            continue
        bases = [r["sessions"].get(n, {}).get("per_step", {}).get("server_seconds") for n in ("loopback", BRACKET.name)]
        bases = [b for b in bases if b]
        base = sum(bases) / len(bases) if bases else None
        for link in links + [BRACKET]:
            s = r["sessions"].get(link.name)
            if s is None:
                continue
            ps = s["per_step"]
            step = ps.get("server_seconds")
            ratio = f"{step / base:.2f}" if step and base else "–"
            model = wire_model_seconds(link, ps)
            out.append(f"| {r['cut']} | {link.name} | {_mb(ps.get('c2s_bytes'))} | {_mb(ps.get('s2c_bytes'))} "
                       f"| {_num(ps.get('round_trips'))} | {_num(ps.get('ciphers_to_client'))} "
                       f"({_levels(ps.get('levels_to_client', {}))}) | {_num(ps.get('ciphers_to_server'))} "
                       f"({_levels(ps.get('levels_to_server', {}))}) | {'–' if step is None else f'{step:.2f}'} "
                       f"| {_sec(ps.get('key_owner_seconds'))} "
                       f"| {ratio} | {'–' if model is None else f'{model:.2f}'} |")
    out += ["", "Mean over steps 2..N (what an epoch costs a step: refreshes differ from step to step, e.g. a "
            "momentum buffer's every few steps):", "",
            "| cut | link | steps | MB client→server | MB server→client | round trips | ciphers to key owner "
            "| step s | wire model s |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        for link in links + [BRACKET]:
            s = r.get("sessions", {}).get(link.name)
            if s is None or not s.get("mean_step"):
                continue
            ms = s["mean_step"]
            model = wire_model_seconds(link, ms)
            out.append(f"| {r['cut']} | {link.name} | {max(len(s['steps']) - 1, 1)} | {_mb(ms.get('c2s_bytes'))} "
                       f"| {_mb(ms.get('s2c_bytes'))} | {ms.get('round_trips', 0):.1f} "
                       f"| {ms.get('ciphers_to_client', 0):.1f} | {_sec(ms.get('server_seconds'))} "
                       f"| {'–' if model is None else f'{model:.2f}'} |")
    relayed = " / ".join(link.name for link in links if not link.direct) or "loopback"
    out += ["", "One-off costs (per cut configuration):", "",
            "| cut | public context MB | dataset upload KB / row | upload MB (context + data) "
            f"| upload time over {relayed} (s, computed) |",
            "|---|---:|---:|---:|---|"]
    for r in results:
        up = r.get("upload", {})
        first = next(iter(r["sessions"].values()), None)
        if first is None:
            continue
        total = sum(first["upload_bytes"].values())
        times = " / ".join(f"{link.transfer_seconds(total):.0f}" for link in links if not link.direct)
        out.append(f"| {r['cut']} | {_mb(up.get('public_context_wire_bytes'))} "
                   f"| {up.get('dataset_bytes_per_row', 0) / 1e3:.1f} | {_mb(total)} | {times or '–'} |")
    out += ["", "Epoch ends (validation logits to the key owner, state refreshed), first session of each cut:",
            "", "| cut | MB client→server | MB server→client | round trips |", "|---|---:|---:|---:|"]
    for r in results:
        first = next(iter(r["sessions"].values()), {"epoch_ends": []})
        for e in first["epoch_ends"][:1]:
            out.append(f"| {r['cut']} | {_mb(e['c2s_bytes'])} | {_mb(e['s2c_bytes'])} | {e['round_trips']} |")
    return "\n".join(out) + "\n"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.wire", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cuts", nargs="+", default=None,
                    help="cut configurations, each none | all | seeded,trim,... with an optional +exact")
    ap.add_argument("--links", nargs="+", default=DEFAULT_LINKS, help="loopback | relay | RATE:DELAY (one way)")
    ap.add_argument("--dataset", choices=["synthetic", "digits", "mnist", "snips"], default="synthetic")
    ap.add_argument("--shape", help="BATCH,FEATURES+1,CLASSES (synthetic; default 1024,769,10)")
    ap.add_argument("--n-train", type=int, help="training rows (synthetic default: two batches)")
    ap.add_argument("--n-val", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--job-option", action="append", default=[], help="KEY=JSON added to every job")
    ap.add_argument("--upload-over-link", action="store_true", help="upload over each link too (slow links: minutes)")
    ap.add_argument("--timeout", type=float, default=7200.0, help="seconds one cut configuration may take")
    ap.add_argument("--out", default="wire", help="results file stem in benchmarks/results/")
    ap.add_argument("--no-netns", action="store_true", help="run on the host's loopback, not in a new namespace")
    ap.add_argument("--bracket", action="store_true",
                    help="a second loopback session after the links; ratios over both loopback steps")
    ap.add_argument("--keep-scratch", action="store_true")
    ap.add_argument("--keep-events", action="store_true", help="every message's time, type and bytes in the JSON")
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.cuts = args.cuts or default_cuts()
    for spec in args.cuts:
        parse_cut(spec)
    links = [parse_link(s) for s in args.links]
    if not args.inside and not args.no_netns:
        if shutil.which("unshare") is None:
            sys.exit("unshare not found: install util-linux or pass --no-netns")
        # a namespace of our own: its loopback only, no port shared with anything else on the machine
        return subprocess.call(["unshare", "-rn", sys.executable, "-m", "benchmarks.wire", "--inside", *argv],
                               cwd=REPO)
    if args.inside:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    token = secrets.token_hex(32)
    meta = {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
                       f"load {os.getloadavg()[0]:.2f} at start",
            "command": "python -m benchmarks.wire " + " ".join(a for a in argv if a != "--inside"),
            "dataset": args.dataset, "shape": args.shape or ("1024,769,10" if args.dataset == "synthetic" else "")}
    results = []
    RESULTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="et-wire-") as tmp:
        for spec in args.cuts:
            try:
                results.append(run_cut(spec, links, args, token, Path(tmp)))
            except (RuntimeError, subprocess.TimeoutExpired) as err:  # the other cuts still run
                print(f"[{spec}] failed: {err}", file=sys.stderr, flush=True)
                results.append({"cut": spec, "error": str(err), "sessions": {}})
            meta["load_at_end"] = round(os.getloadavg()[0], 2)
            (RESULTS / f"{args.out}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
            table = markdown(results, links, meta)
            (RESULTS / f"{args.out}.md").write_text(table)
    print(table, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
