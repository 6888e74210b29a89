"""What the key owner's checks cost: the domain guard per refreshed ciphertext, and the job plan's dry run.

``python -m benchmarks.key_owner_guard [--preset fast]``: times a refresh (decrypt, re-encrypt) with
and without the guard on the same ciphertexts, in turn, and the dry run that plans a
(1024, 769, 10) job; prints the guard's share of a refresh and of a training step.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import encrypted_torch as et
from encrypted_torch.approx.softmax import SoftmaxConfig
from encrypted_torch.functional.domain import stage_bounds
from encrypted_torch.hetal.pipeline import rotation_steps
from encrypted_torch.nn.linear import Linear
from encrypted_torch.server.job import build_hetal_linear, validate_job
from encrypted_torch.training.refresh_plan import plan_refreshes
from encrypted_torch.training.unit_choice import choose_unit


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--ciphers", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    b, d, c = 1024, 768, 10
    params = et.PRESETS[args.preset]
    unit = choose_unit(b, d + 1, c, params)
    secret = et.SecretContext.create(args.preset, rotations=rotation_steps(unit, c))
    ev = secret.public().evaluator
    ciphers = [ev.encrypt(np.random.default_rng(i).uniform(-0.5, 0.5, secret.slots)) for i in range(args.ciphers)]
    bounds = stage_bounds(SoftmaxConfig(), c, params=params)

    def guard(values: list[np.ndarray]) -> None:
        bounds.check("softmax max (round input)", np.stack([v.real for v in values]))

    plain, guarded = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        secret.refresh(ciphers)
        plain.append(time.perf_counter() - t)
        t = time.perf_counter()
        secret.refresh(ciphers, inspect=guard)
        guarded.append(time.perf_counter() - t)
    values = [secret.decrypt_vector(x) for x in ciphers]
    t = time.perf_counter()
    for _ in range(20):
        guard(values)
    check = (time.perf_counter() - t) / 20 / len(ciphers)
    per_refresh = statistics.median(plain) / len(ciphers)
    print(f"preset {args.preset}: refresh {per_refresh * 1e3:.2f} ms/ciphertext, guard {check * 1e6:.1f} µs/ciphertext "
          f"({check / per_refresh:.2%} of a refresh); with the guard / without, paired medians: "
          f"{statistics.median(g / p for g, p in zip(guarded, plain, strict=True)):.3f}")
    job = validate_job({"model": "hetal-linear", "in_features": d, "out_features": c, "lr": 1.0, "epochs": 14},
                       {"hetal-linear": build_hetal_linear})

    def build(null: et.PublicContext) -> tuple:
        init = Linear(d, c, init="zeros").encrypt(null, unit=unit).state_dict()
        return build_hetal_linear(null, job, dict(init), unit)

    t = time.perf_counter()
    plan = plan_refreshes(secret.public(), build, unit=unit, num_features=d, num_classes=c, train_rows=[b] * 13,
                          val_rows=[700], steps_per_epoch=13, epochs=14)
    print(f"plan of a (1024, 769, 10) job, 13 steps/epoch: {time.perf_counter() - t:.2f} s once; "
          f"{plan.refreshes_per_epoch} refreshed ciphertexts per epoch ({plan.refreshes_per_epoch / 13:.1f}/step "
          f"incl. validation), {len(plan.per_epoch)} (stage, level) entries")


if __name__ == "__main__":
    main()
