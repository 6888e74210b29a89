"""The shape and depth of a trained job's encrypted inference, which both sides compute alike.

The server applies the job's model to features the key owner encrypts; the key owner encrypts them
at the lowest level the model's forward pass needs (fewer primes: smaller ciphertexts and a faster
product), and the server refuses less. Both find that level by running the very same forward pass
on the null backend (``ckks.null_backend``: levels only, no data, milliseconds), from the job and
the weights' layouts, never from what the other side claims.
"""

from __future__ import annotations

import contextvars
from typing import Any

import numpy as np
import torch

from .. import parallel
from ..autograd import no_grad
from ..ckks.null_backend import null_context
from ..errors import DepthError, ShapeError
from ..tensor.enctensor import EncTensor, encrypt
from ..tensor.layout import BlockLayout
from .job import BUILDERS, Builder


def input_layout(rows: int, in_features: int, unit: tuple[int, int]) -> BlockLayout:
    """How ``rows`` samples' features travel: (rows, in_features) in the weights' block shape, grid tiling."""
    return BlockLayout((rows, in_features), tuple(unit), "grid")


def model_unit(layouts: dict[str, BlockLayout]) -> tuple[int, int]:
    """The block shape every parameter of a model shares (ShapeError if they differ)."""
    units = {tuple(lay.unit) for lay in layouts.values()}
    if len(units) != 1:
        raise ShapeError(f"a model's parameters must share one block shape, got {sorted(units)}")
    return units.pop()  # type: ignore[return-value]


def input_level(ctx: Any, job: dict[str, Any], layouts: dict[str, BlockLayout],
                builders: dict[str, Builder] | None = None) -> int:
    """The lowest level at which the job's model takes its input, the weights being at the top level.

    A dry run of the model's forward pass on the null backend of ``ctx``'s parameters and primes,
    one block row of input at each level from 0 up; DepthError if even the top level is too low.
    Runs in an empty ``contextvars.Context``: the caller's counters and refresher see none of it.
    """
    return contextvars.Context().run(_input_level, ctx, job, layouts, BUILDERS if builders is None else builders)


def _input_level(ctx: Any, job: dict[str, Any], layouts: dict[str, BlockLayout], builders: dict[str, Builder]) -> int:
    null = null_context(ctx.params, ctx.rotation_steps, "inference plan", primes=ctx.backend.primes)
    unit = model_unit(layouts)
    weights = {k: encrypt(torch.zeros(lay.shape), null, layout=lay) for k, lay in layouts.items()}
    model = builders[job["model"]](null, job, weights, unit)[0]
    layout = input_layout(unit[0], int(job["in_features"]), unit)
    n_a, n_b = layout.grid
    ev, zeros = null.evaluator, np.zeros(null.slots)
    last: DepthError | None = None
    for level in range(null.top_level + 1):
        x = EncTensor([[ev.encrypt(zeros, level=level) for _ in range(n_b)] for _ in range(n_a)], layout, null)
        try:
            with no_grad(), parallel.use_workers(1):  # null ciphertexts cannot travel to worker processes
                model(x)
        except DepthError as err:
            last = err
            continue
        return level
    assert last is not None
    raise DepthError(f"the {job['model']} model's forward pass", last.needed, null.top_level,
                     "the preset has too few levels for this model's inference; pick a deeper preset")
