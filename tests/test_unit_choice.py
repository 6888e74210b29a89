"""The unit cost model: its dry run counts what a real step runs, and it picks the cheapest unit."""

from __future__ import annotations

import pytest
import torch

import encrypted_torch as et
from encrypted_torch.ckks.params import get_params
from encrypted_torch.functional import cross_entropy
from encrypted_torch.linalg.steps import hetal_rotation_steps
from encrypted_torch.parallel import use_workers
from encrypted_torch.refresh import ensure_levels
from encrypted_torch.tensor.layout import next_pow2
from encrypted_torch.training.unit_choice import candidate_units, choose_unit, step_cost_ms, step_counts


def test_candidates_hold_the_classes_both_ways() -> None:
    units = candidate_units(1024, 10, 8192)
    assert units == [(16, 512), (32, 256), (64, 128), (128, 64), (256, 32), (512, 16)]
    assert candidate_units(100, 3, 8192)[-1] == (128, 64)  # no block taller than the batch needs
    assert all(s0 * s1 == 8192 and s0 >= 16 and s1 >= 16 for s0, s1 in units)


@pytest.mark.parametrize("shape, unit", [((300, 129, 5), (128, 64)), ((200, 65, 3), (64, 128))])
def test_dry_run_counts_what_the_plaintext_backend_runs(shape, unit) -> None:
    """Same code path, same keys: the dry run's counts by level equal a real step's on exact slots."""
    batch, features, classes = shape
    params = get_params("fast")
    ctx = et.SecretContext.create(params, rotations=hetal_rotation_steps(unit, next_pow2(classes)),
                                  backend="plain")
    g = torch.Generator().manual_seed(0)
    x = et.encrypt(torch.randn(batch, features, generator=g, dtype=torch.float64) / 30, ctx, unit=unit)
    w = et.encrypt(torch.randn(classes, features, generator=g, dtype=torch.float64) / 30, ctx, unit=unit,
                   tiling="vertical").requires_grad_()
    labels = torch.randint(0, classes, (batch,), generator=g)
    y = et.encrypt(torch.nn.functional.one_hot(labels, classes).double(), ctx, unit=unit, tiling="horizontal")
    with use_workers(1), et.refresh_with(ctx), et.count_ops() as ops:
        cross_entropy(x @ w.T, y).backward()
        ensure_levels(w.grad.ciphers(), 1, "optimizer")
    dry = step_counts(batch, features, classes, unit, params)
    assert ops.as_dict() == dry.as_dict()
    assert ops.by_level == dry.by_level


def test_choice_is_the_cheapest_candidate() -> None:
    params = get_params("fast")
    for batch, features, classes in [(1024, 769, 10), (512, 769, 3), (256, 65, 7)]:
        unit = choose_unit(batch, features, classes, "fast")
        costs = {u: step_cost_ms(batch, features, classes, u, params)
                 for u in candidate_units(batch, classes, params.slots)}
        assert costs[unit] == min(costs.values())
    # HETAL's rule takes (512, 16) here; the model prefers wider blocks (fewer column blocks)
    assert choose_unit(1024, 769, 10, "fast") == (256, 32)
