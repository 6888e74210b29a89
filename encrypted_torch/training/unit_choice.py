"""Pick the block shape (s0, s1) of a training step by its cost: op counts by level × per-op costs.

HETAL's rule (``tensor.layout.unit_shape``) takes the tallest block the classes allow. Here every
unit that fits runs one training step dry (the real code path on a backend that does nothing but
track levels and count), and the cheapest wins. The per-op costs are a linear-in-level model of the
CPU times measured on SEAL at N=16384 (benchmarks/results/train_step.md), scaled with N; only
their ratios matter for the choice.
"""

from __future__ import annotations

import contextvars
from functools import lru_cache
from typing import Any

from ..ckks import counters
from ..ckks.null_backend import DryRefresher, null_context
from ..ckks.params import CKKSParams, get_params
from ..errors import EncTorchError, ShapeError
from ..functional.cross_entropy import cross_entropy
from ..linalg.steps import hetal_rotation_steps
from ..parallel import use_workers
from ..refresh import ensure_levels, refresh_with
from ..tensor.enctensor import EncTensor
from ..tensor.layout import BlockLayout, next_pow2, unit_shape

#: ms per op at level ℓ for N=16384: a + b·ℓ (fit to the per-level medians of the train_step benchmark).
COST_MODEL_MS: dict[str, tuple[float, float]] = {
    "rotations": (2.0, 3.9), "conjugations": (2.0, 3.9), "relinearizations": (2.0, 3.9),
    "ct_ct_mults": (0.6, 0.35), "ct_pt_mults": (0.8, 0.1), "rescales": (0.9, 0.6),
    "additions": (0.15, 0.09), "mod_switches": (0.15, 0.09), "encryptions": (20.0, 0.0),
    "refreshes": (22.0, 2.0),
}


def op_cost_ms(name: str, level: int | None, params: CKKSParams) -> float:
    """Modelled CPU ms of one op at ``level`` (None: the top) under ``params``."""
    a, b = COST_MODEL_MS.get(name, (0.0, 0.0))
    lvl = params.levels if level is None else level
    return (a + b * lvl) * params.poly_modulus_degree / 16384


def candidate_units(batch: int, classes: int, slots: int) -> list[tuple[int, int]]:
    """Power-of-two units that hold c_pad both ways (logits horizontal, weights vertical) and no
    block taller than the batch needs."""
    c_pad = next_pow2(classes)
    units = []
    s0 = c_pad
    while s0 * c_pad <= slots:
        if s0 <= max(next_pow2(batch), c_pad):
            units.append((s0, slots // s0))
        s0 *= 2
    return units


def step_counts(batch: int, features: int, classes: int, unit: tuple[int, int],
                params: CKKSParams) -> counters.OpCounts:
    """Op counts (by level) of one training step (x @ w.T, cross-entropy, backward, the gradient's
    refresh), run dry; ``features`` includes the bias column."""
    def run() -> counters.OpCounts:
        steps = hetal_rotation_steps(unit, next_pow2(classes))
        ctx = null_context(params, steps, "unit-choice")
        ev = ctx.evaluator

        def tensor(shape: tuple[int, int], tiling: str) -> EncTensor:
            layout = BlockLayout(shape, unit, tiling)
            n_a, n_b = layout.grid
            return EncTensor([[ev.encrypt(0.0) for _ in range(n_b)] for _ in range(n_a)], layout, ctx)

        x, y = tensor((batch, features), "grid"), tensor((batch, classes), "horizontal")
        w = tensor((classes, features), "vertical").requires_grad_()
        with refresh_with(DryRefresher(ev)), use_workers(1), counters.count_ops() as ops:
            cross_entropy(x @ w.T, y).backward()
            ensure_levels(w.grad.ciphers(), 1, "optimizer")
        return ops

    return contextvars.Context().run(run)


def step_cost_ms(batch: int, features: int, classes: int, unit: tuple[int, int], params: CKKSParams) -> float:
    """Modelled CPU ms of one training step with this unit."""
    ops = step_counts(batch, features, classes, unit, params)
    return sum(n * op_cost_ms(name, level, params) for (name, level), n in ops.by_level.items())


@lru_cache(maxsize=64)
def _choose(batch: int, features: int, classes: int, params: CKKSParams) -> tuple[int, int]:
    units = candidate_units(batch, classes, params.slots)
    if not units:
        raise ShapeError(f"{classes} classes do not fit {params.slots} slots")
    hetal = unit_shape(batch, classes, params.slots)
    costs = {}
    for u in units:
        try:
            costs[u] = step_cost_ms(batch, features, classes, u, params)
        except EncTorchError:  # a unit this preset cannot train with: not a candidate
            continue
    if not costs:
        return hetal
    return min(costs, key=lambda u: (costs[u], u != hetal))


def choose_unit(batch: int, features: int, classes: int, params: Any = "fast") -> tuple[int, int]:
    """The cheapest unit for a training step on (batch × features) inputs and ``classes`` classes
    (``features`` counts the bias column); ``params``: a preset name or CKKSParams.

    >>> choose_unit(1024, 769, 10, "fast")     # doctest: +SKIP
    (256, 32)
    """
    return _choose(batch, features, classes, get_params(params))
