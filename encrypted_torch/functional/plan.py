"""The softmax's depth and refresh plan, computed before running by a dry run on a null backend.

The softmax's operations depend on the layout and the levels only, never on the values, so running
the very same code on ciphers that carry levels and scales but no data gives its exact depth, its
refresh points and its operation counts in milliseconds. The dry run runs in an empty
``contextvars.Context``: the caller's op counters, refresher and timers see none of it.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from ..approx.softmax import SoftmaxConfig
from ..ckks import counters
from ..ckks.evaluator import Cipher, Evaluator
from ..ckks.null_backend import DryRefresher, NullBackend, seal_primes, synthetic_params
from ..ckks.params import CKKSParams, get_params
from ..ckks.public import PublicContext
from ..refresh import refresh_with
from ..tensor.layout import BlockLayout, unit_shape
from .softmax_core import Ensure, RefreshPolicy, softmax_ciphers

__all__ = ["CANDIDATES", "NullBackend", "SoftmaxPlan", "plan_softmax", "synthetic_params"]


@dataclass(frozen=True)
class SoftmaxPlan:
    """Depth, refreshes and operation counts of one softmax call, known before running it.

    ``refreshes`` counts ciphertexts (all block rows); ``round_trips`` the key-owner round trips;
    ``refresh_points`` the stages where they happen, with the number of ciphertexts each.
    """

    config: SoftmaxConfig
    layout: BlockLayout
    top_level: int
    input_level: int
    depth: int
    output_level: int
    refreshes: int
    round_trips: int
    refresh_points: tuple[tuple[str, int], ...]
    ops: dict[str, int]
    policy: RefreshPolicy

    @property
    def block_rows(self) -> int:
        return self.layout.grid[0]

    @property
    def refreshes_per_block_row(self) -> float:
        return self.refreshes / self.block_rows


#: The policies a plan compares: late everywhere, and each junction rule (RefreshPolicy).
CANDIDATES = (RefreshPolicy(1, 1), RefreshPolicy(3, 1), RefreshPolicy(1, 2), RefreshPolicy(3, 2))


def plan_softmax(config: SoftmaxConfig, shape: tuple[int, int], params: Any = "fast", *,
                 unit: tuple[int, int] | None = None, input_level: int | None = None,
                 input_scale: float = 1.0, policy: RefreshPolicy | None = None) -> SoftmaxPlan:
    """The plan of ``softmax``/``cross_entropy`` on (batch × classes) logits.

    ``params``: a preset name, CKKSParams or a PublicContext (whose primes and rotation keys are
    then used). ``input_level``: the logits' level (default: the top). ``policy``: None picks the
    candidate with the fewest refreshes (ties: the latest), which is what ``softmax`` runs.

    >>> plan_softmax(SoftmaxConfig(), (1024, 10), "fast").refreshes     # doctest: +SKIP
    11
    """
    steps = None
    if isinstance(params, PublicContext):
        steps, primes, params = params.rotation_steps, params.backend.primes, params.params
    else:
        params = get_params(params)
        primes = seal_primes(params)
    batch, classes = shape
    layout = BlockLayout((batch, classes), unit or unit_shape(batch, classes, params.slots), "horizontal")
    level = params.levels if input_level is None else input_level
    keys = None if steps is None else frozenset(steps)
    key = (config, layout, params, tuple(primes), keys, level, input_scale)
    if policy is None:
        policy = min(CANDIDATES, key=lambda p: _plan(*key, p).refreshes)
    return _plan(*key, policy)


@lru_cache(maxsize=256)
def _plan(config: SoftmaxConfig, layout: BlockLayout, params: CKKSParams, primes: tuple[int, ...],
          steps: frozenset[int] | None, level: int, input_scale: float, policy: RefreshPolicy) -> SoftmaxPlan:
    ev = Evaluator(NullBackend(params, list(primes), steps), "plan")
    ops, out, log = _dry_run(ev, config, layout, level, input_scale, policy)
    depth = _depth(config, layout, params.poly_modulus_degree, input_scale)
    return SoftmaxPlan(config, layout, params.levels, level, depth, min(c.level for c in out), ops.refreshes,
                       len(log), tuple(log), ops.as_dict(), policy)


@lru_cache(maxsize=64)
def _depth(config: SoftmaxConfig, layout: BlockLayout, poly_modulus_degree: int, input_scale: float) -> int:
    """Levels consumed with enough of them never to refresh: what config.depth(c) predicts."""
    deep = synthetic_params(config.depth(layout.shape[1]) + 2, poly_modulus_degree)
    ev = Evaluator(NullBackend(deep, [2**60] + [2**40] * deep.levels), "depth")
    _, out, _ = _dry_run(ev, config, layout, deep.levels, input_scale, RefreshPolicy())
    return deep.levels - min(c.level for c in out)


def _dry_run(ev: Evaluator, config: SoftmaxConfig, layout: BlockLayout, level: int, input_scale: float,
             policy: RefreshPolicy) -> tuple[counters.OpCounts, list[Cipher], list[tuple[str, int]]]:
    def run() -> tuple[counters.OpCounts, list[Cipher], list[tuple[str, int]]]:
        ensure = Ensure()
        xs = [ev.encrypt(0.0, level=level) for _ in range(layout.grid[0])]
        with refresh_with(DryRefresher(ev)), counters.count_ops() as ops:
            out = softmax_ciphers(ev, xs, layout, config, input_scale=input_scale, ensure=ensure,
                                  policy=policy)
        return ops, out, ensure.log

    return contextvars.Context().run(run)
