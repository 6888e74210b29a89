"""Median wall and CPU time of each CKKS op through the Evaluator on real SEAL ("fast", "deep").

    python -m benchmarks.ops [--presets fast deep] [--repeats 15]

Keys are made with a single rotation step (``rotations=[1]``, plus conjugation): one N=32768
Galois key takes ~200 MB, and every rotation timed here is by 1. Each op runs on fresh operands
prepared outside the timed region; the table gives the median over ``--repeats`` runs (a third
of it for "deep"). Writes benchmarks/results/ops.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import encrypted_torch as et

RESULTS = Path(__file__).parent / "results" / "ops.md"
OPS = [
    "keygen (sk, pk, relin, 2 Galois keys)",
    "server context: SecretContext.public()",
    "encrypt (public key, top)",
    "decrypt + decode (top)",
    "decrypt + decode (last level)",
    "add (top)",
    "mul + relin + rescale (top)",
    "mul + relin + rescale (level 1)",
    "mul_plain, cached mask, + rescale (top)",
    "mul_plain, new vector (encode) + rescale (top)",
    "rotate by 1 (top)",
    "rotate by 1 (last level)",
    "conjugate (top)",
    "mod_switch one level (top)",
    "serialize ciphertext (top)",
    "deserialize ciphertext (top)",
    "EncTensor.to_bytes, 1 block (top)",
]


Timing = tuple[float, float]  # (wall, CPU) milliseconds


def _once(run: Callable[[], Any]) -> tuple[Timing, Any]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = run()
    return (1e3 * (time.perf_counter() - wall), 1e3 * (time.process_time() - cpu)), out


def _median_ms(run: Callable[[Any], Any], prepare: Callable[[], Any], repeats: int) -> Timing:
    """Median wall and CPU time of ``run(prepare())``; SEAL is single-threaded, so on a busy
    machine the CPU time is the op's cost and the wall time adds the waiting."""
    times = []
    for _ in range(repeats):
        arg = prepare()
        times.append(_once(lambda a=arg: run(a))[0])
    return statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)


def bench(preset: str, repeats: int) -> tuple[dict[str, Timing], dict[str, str]]:
    keygen, secret = _once(lambda: et.SecretContext.create(preset, rotations=[1], backend="seal"))
    server, pub = _once(secret.public)
    ev, backend = pub.evaluator, pub.backend
    rng = np.random.default_rng(0)
    n = pub.slots

    def vec() -> np.ndarray:
        return rng.uniform(-1, 1, n)

    def fresh() -> Any:
        return ev.encrypt(vec())

    def fresh_pair() -> tuple[Any, Any]:
        return fresh(), fresh()

    def at_level(level: int) -> Callable[[], Any]:
        return lambda: ev.mod_switch(fresh(), level)

    mask = vec()
    ev.mul_plain(fresh(), mask)  # encode the mask once: it is then cached, as masks are in algorithms
    top_bytes = backend.handle_to_bytes(fresh().handle)
    tensor = et.encrypt(np.ones((1, n)), pub)

    runs = [
        (lambda v: ev.encrypt(v), vec),
        (secret.decrypt_vector, fresh),
        (secret.decrypt_vector, at_level(0)),
        (lambda ab: ev.add(*ab), fresh_pair),
        (lambda ab: ev.mul(*ab), fresh_pair),
        (lambda ab: ev.mul(*ab), lambda: (at_level(1)(), at_level(1)())),
        (lambda c: ev.mul_plain(c, mask), fresh),
        (lambda cv: ev.mul_plain(*cv), lambda: (fresh(), vec())),
        (lambda c: ev.rotate(c, 1), fresh),
        (lambda c: ev.rotate(c, 1), at_level(0)),
        (ev.conjugate, fresh),
        (lambda c: ev.mod_switch(c, c.level - 1), fresh),
        (lambda c: backend.handle_to_bytes(c.handle), fresh),
        (backend.handle_from_bytes, lambda: top_bytes),
        (lambda t: t.to_bytes(), lambda: tensor),
    ]
    timings = {OPS[0]: keygen, OPS[1]: server}
    for op, (run, prepare) in zip(OPS[2:], runs, strict=True):
        timings[op] = _median_ms(run, prepare, repeats)
    low_bytes = backend.handle_to_bytes(at_level(0)().handle)
    sizes = {
        "ciphertext bytes (top / last level)": f"{len(top_bytes) / 1e6:.2f} / {len(low_bytes) / 1e6:.2f} MB",
        "public context bytes (2 Galois keys)": f"{len(secret.public_bytes()) / 1e6:.0f} MB",
    }
    return timings, sizes


def render(results: dict[str, tuple[dict[str, Timing], dict[str, str]]], repeats: dict[str, int],
           seconds: float) -> str:
    presets = list(results)
    head = [f"{p} (N={et.PRESETS[p].poly_modulus_degree}, L={et.PRESETS[p].levels}) {kind}"
            for p in presets for kind in ("wall ms", "CPU ms")]
    lines = [
        "# CKKS op timings (SEAL 4.3 via tenseal.sealapi, through encrypted_torch's Evaluator)",
        "",
        "`python -m benchmarks.ops`: median wall and CPU time per op over "
        + ", ".join(f"{repeats[p]} runs ({p})" for p in presets) + ", fresh operands each run.",
        "Modulus chains [60, 40×L, 60], Δ = 2^40; \"top\" is a fresh ciphertext, \"last level\" chain",
        "index 0. Keys: rotation step 1 and conjugation only (one N=32768 Galois key is ~200 MB).",
        "",
        "| op | " + " | ".join(head) + " |",
        "|---|" + "---:|" * len(head),
    ]
    for op in OPS:
        cells = [f"{t:.2f}" for p in presets for t in results[p][0][op]]
        lines.append(f"| {op} | " + " | ".join(cells) + " |")
    for key in results[presets[0]][1]:
        cells = [cell for p in presets for cell in (results[p][1][key], "")]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines += [
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"load average at the end {load}: the machine is shared, so wall times include waiting for a "
        "core; the CPU times are the ops' own cost. "
        f"Total run time {seconds:.0f} s.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["fast", "deep"], choices=sorted(et.PRESETS))
    parser.add_argument("--repeats", type=int, default=15, help="runs per op (a third of it, at least 3, for deep)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    results, repeats = {}, {}
    for preset in args.presets:
        repeats[preset] = max(3, args.repeats // 3) if preset == "deep" else args.repeats
        print(f"{preset}: keygen and {repeats[preset]} runs per op ...", flush=True)
        results[preset] = bench(preset, repeats[preset])
    text = render(results, repeats, time.perf_counter() - t0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
