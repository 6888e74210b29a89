"""What encrypted inference costs per batch: latency and bytes each way (issue #15, item 4).

    python -m benchmarks.inference                      # preset fast, 768 features (+ bias), 10 classes
    python -m benchmarks.inference --batches 256 1024 --repeats 2 --preset fast

Trains one real session first (an in-process ``TrainingServer`` on loopback, SEAL keys, synthetic
features, one step of one epoch: the weights' values do not change the cost), then sends encrypted
batches of each size to it through ``client.infer.EncryptedInference``. Per batch: the client's
encryption, the round trip (sending, the server's product, the reply), the decryption, and the bytes
each way as the protocol's channel counts them (sealed messages). Writes
benchmarks/results/inference.md.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path

import torch

from encrypted_torch.client.infer import EncryptedInference
from encrypted_torch.client.remote import RemoteSession
from encrypted_torch.datasets.splits import FeatureSplits
from encrypted_torch.hetal.config import HetalConfig
from encrypted_torch.hetal.prepare import decrypt_linear, prepare_hetal
from encrypted_torch.server import Limits, ServerConfig, TrainingServer
from encrypted_torch.tensor.layout import BlockLayout

TOKEN = b"benchmark-inference-token-0123456789"
RESULTS = Path(__file__).resolve().parent / "results" / "inference.md"
#: (name, input level, seeded): the plan's level with seeded secret-key encryptions (what the client
#: sends), and fresh public-key-sized encryptions at the top level (the naive way), in turn
MODES = (("planned+seeded", "planned", True), ("top", "top", False))


def synthetic(n: int, d: int, c: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(c, d, generator=g)
    y = torch.arange(n) % c
    return (centers[y] + 2 * torch.randn(n, d, generator=g)).float(), y


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--backend", default="seal", choices=["seal", "plain"])
    ap.add_argument("--features", type=int, default=768)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--train-batch", type=int, default=256, help="training batch: it sets the block shape")
    ap.add_argument("--batches", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    d, c, b = args.features, args.classes, args.train_batch
    max_rows = max(args.batches)
    splits = FeatureSplits(synthetic(b, d, c, 0), synthetic(b, d, c, 1), synthetic(max_rows, d, c, 2),
                           [str(i) for i in range(c)], "synthetic")
    cfg = HetalConfig(dataset="synthetic", preset=args.preset, backend=args.backend, batch_size=b, epochs=1,
                      max_steps=1, lr=1.0)
    t0 = time.perf_counter()
    prep = prepare_hetal(cfg, splits=splits)
    print(f"keys and data: {time.perf_counter() - t0:.1f} s; unit {prep.train.unit}", flush=True)
    rows_out = []
    with tempfile.TemporaryDirectory(prefix="et-bench-inference-") as tmp:
        limits = Limits(max_infer_rows=max_rows)
        server = TrainingServer(ServerConfig(Path(tmp), TOKEN, allow_plain=args.backend == "plain", limits=limits))
        server.start()
        try:
            session = RemoteSession(f"ws://127.0.0.1:{server.port}", TOKEN, prep.key_owner, timeout=3600)
            session.connect()
            session.upload(prep.train, prep.val)
            t0 = time.perf_counter()
            session.train(prep.job(), prep.init)
            print(f"training (1 step + validation): {time.perf_counter() - t0:.1f} s", flush=True)
            local = decrypt_linear(session.fetch_model(), prep.secret, prep.in_features)
            x = prep.test[0]
            top = prep.secret.public().top_level
            for rows in args.batches:
                for rep, (mode, level, seeded) in itertools.product(range(args.repeats), MODES):
                    inference = EncryptedInference(session, prep.job(), prep.init, batch_size=rows,
                                                   level=top if level == "top" else None, seeded=seeded)
                    t0 = time.perf_counter()
                    got = inference.logits(x[:rows])
                    total = time.perf_counter() - t0
                    with torch.no_grad():
                        err = (got - local(x[:rows].double())).abs().max().item()
                    st = inference.stats
                    rows_out.append({"rows": rows, "mode": mode, "level": inference.level, "rep": rep, "total": total,
                                     "encrypt": st.encrypt_seconds,
                                     "round_trip": st.server_seconds, "decrypt": st.decrypt_seconds,
                                     "sent": st.bytes_sent, "received": st.bytes_received, "err": err,
                                     "blocks": BlockLayout((rows, d), prep.train.unit, "grid").grid})
                    print(rows_out[-1], flush=True)
            session.close()
        finally:
            server.shutdown()
    write_table(args, prep.train.unit, rows_out)


def write_table(args: argparse.Namespace, unit: tuple[int, int], rows: list[dict]) -> None:
    lines = [f"# Encrypted inference per batch ({args.backend}, preset {args.preset}, {args.features} features "
             f"+ bias, {args.classes} classes, unit {tuple(unit)}; median of {args.repeats}, the two modes in turn, "
             "in-process server on loopback, 2 shared cores)", "",
             "`python -m benchmarks.inference`. planned+seeded: features at the level the forward pass needs "
             "(training.inference_plan), seeded secret-key encryptions (what client.infer sends); top: fresh "
             "full-size encryptions at the top level. Round trip = sending, the server's product, the reply.", "",
             "| rows | mode | input level | blocks (x) | total s | encrypt s | round trip s | decrypt s | sent MB | "
             "received MB | ms/row | max abs err vs torch |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for n in args.batches:
        for mode, _, _ in MODES:
            rs = [r for r in rows if r["rows"] == n and r["mode"] == mode]

            def med(k: str, rs: list[dict] = rs) -> float:
                return statistics.median(r[k] for r in rs)

            lines.append(f"| {n} | {mode} | {rs[0]['level']} | {rs[0]['blocks'][0]}×{rs[0]['blocks'][1]} | "
                         f"{med('total'):.2f} | {med('encrypt'):.2f} | {med('round_trip'):.2f} | "
                         f"{med('decrypt'):.3f} | {med('sent') / 1e6:.1f} | {med('received') / 1e6:.2f} | "
                         f"{1000 * med('total') / n:.2f} | {max(r['err'] for r in rs):.2g} |")
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
