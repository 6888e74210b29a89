"""What a training job will ask of the key owner, known before it starts: a dry run on a null backend.

Refreshes depend on levels, never on values, so running the server's own training code (the same
``Trainer.train_step`` and ``validation_logits``) on ciphers that carry levels but no data gives the
exact refreshes of an epoch — by stage (the op asking) and level — and the layouts of the
validation logits and of the state sent at each epoch end. The key owner holds the server to this
plan (``client.policy``); the server could compute the same plan from the same job.
"""

from __future__ import annotations

import contextvars
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .. import parallel
from ..ckks.evaluator import Cipher
from ..ckks.null_backend import null_context
from ..ckks.public import PublicContext
from ..data.dataset import EncBatch, KeptLabels
from ..tensor.enctensor import EncTensor, encrypt
from ..tensor.layout import BlockLayout
from .key_owner_link import EpochVerdict
from .trainer import Trainer

Build = Callable[[PublicContext], tuple[Any, Any, Any]]

KEY_OWNER_SOFTMAX = "key-owner softmax"
"""The stage name under which the exact-softmax protocol's gradient requests count (their logits)."""


@dataclass(frozen=True)
class RefreshPlan:
    """One epoch's refreshes and the epoch end's shapes, for a job of ``epochs`` epochs.

    ``per_epoch``: refreshed ciphertexts by (stage, level) over an epoch's steps and its validation
    pass (the largest of the first two epochs; later epochs start from the same fresh state as the
    second). ``per_step``: the most one step asks by (stage, level), the unit of replay after a
    resume. ``val_layouts``: the validation logits the key owner expects, batch by batch.
    ``state_layouts``: what the server may send to refresh at an epoch end.
    """

    epochs: int
    steps_per_epoch: int
    per_epoch: dict[tuple[str, int], int]
    per_step: dict[tuple[str, int], int]
    validation: dict[tuple[str, int], int]
    val_layouts: tuple[BlockLayout, ...]
    state_layouts: dict[str, BlockLayout]

    @property
    def refreshes_per_epoch(self) -> int:
        return sum(self.per_epoch.values())

    @classmethod
    def nothing(cls) -> RefreshPlan:
        """The plan of a finished job: no refresh, no verdict."""
        return cls(0, 0, {}, {}, {}, (), {})


class _Recorder:
    """The dry run's key owner: records each refresh and hands back a top-level null cipher."""

    def __init__(self, ctx: PublicContext) -> None:
        self.ctx = ctx
        self.usage: Counter = Counter()

    def refresh(self, ciphers: Sequence[Cipher], stage: str = "", level: int | None = None) -> list[Cipher]:
        for c in ciphers:
            self.usage[(stage, c.level)] += 1
        return [self.ctx.evaluator.encrypt(0.0, level=level) for _ in ciphers]

    def softmax_gradient(self, logits: EncTensor, labels: KeptLabels, level: int | None = None) -> EncTensor:
        for c in logits.ciphers():
            self.usage[(KEY_OWNER_SOFTMAX, c.level)] += 1
        return encrypt(torch.zeros(logits.shape), self.ctx, layout=logits.layout, level=level)

    def end_epoch(self, epoch: int, dataset: str, val_logits: list[EncTensor],
                  state: dict[str, EncTensor]) -> EpochVerdict:
        fresh = {k: encrypt(torch.zeros(v.shape), self.ctx, layout=v.layout) for k, v in state.items()}
        return EpochVerdict(fresh, False)

    def best_state(self) -> dict[str, EncTensor]:
        return {}


def plan_refreshes(ctx: PublicContext, build: Build, *, unit: tuple[int, int], num_features: int,
                   num_classes: int, train_rows: Sequence[int], val_rows: Sequence[int],
                   steps_per_epoch: int, epochs: int) -> RefreshPlan:
    """Dry-run two epochs of ``build(null_ctx)``'s (model, optimizer, criterion) on null ciphers.

    Two schedules, and the larger count of each (stage, level): every step on the largest batch,
    and the epoch's real batch sizes (a smaller last batch can take another path through the softmax
    and ask for a refresh the full ones do not). Runs in an empty ``contextvars.Context`` on one
    process: the caller's counters, refresher and timers see none of it. Milliseconds per step.
    """
    largest = max(train_rows)
    if steps_per_epoch >= len(train_rows):
        real = list(train_rows)
    else:  # the server picks max_steps batches: each smaller size may be among them
        real = ([r for r in sorted(set(train_rows)) if r != largest] + [largest] * steps_per_epoch)[:steps_per_epoch]
    schedules = [[largest] * steps_per_epoch] + ([real] if real != [largest] * steps_per_epoch else [])

    def run(schedule: list[int]) -> RefreshPlan:
        null = null_context(ctx.params, ctx.rotation_steps, "plan", primes=ctx.backend.primes)
        model, optimizer, criterion = build(null)
        kept = getattr(criterion, "labels_stay_with_key_owner", False)

        def batch(rows: int) -> tuple[EncTensor, Any]:
            x = encrypt(torch.zeros(rows, num_features), null, layout=BlockLayout((rows, num_features), unit, "grid"))
            if kept:
                return x, KeptLabels("train", 0, rows)
            return x, encrypt(torch.zeros(rows, num_classes), null,
                              layout=BlockLayout((rows, num_classes), unit, "horizontal"))

        batches = {r: batch(r) for r in set(schedule)}
        vals = [EncBatch(encrypt(torch.zeros(r, num_features), null,
                                 layout=BlockLayout((r, num_features), unit, "grid")), None, r) for r in val_rows]
        link = _Recorder(null)
        trainer = Trainer(model, optimizer, link, criterion, progress=False)
        epochs_usage, per_step, validation = [], Counter(), Counter()
        val_layouts: tuple[BlockLayout, ...] = ()
        state_layouts: dict[str, BlockLayout] = {}
        with parallel.use_workers(1):
            for epoch in range(2):
                start = Counter(link.usage)
                for rows in schedule:
                    before = Counter(link.usage)
                    trainer.train_step(*batches[rows], epoch)
                    per_step |= link.usage - before
                before = Counter(link.usage)
                logits = trainer.validation_logits(vals)
                validation |= link.usage - before
                state = trainer._state_to_refresh()
                val_layouts = tuple(t.layout for t in logits)
                state_layouts.update({k: v.layout for k, v in state.items()})
                trainer._load_refreshed(link.end_epoch(epoch, "val", logits, state).refreshed)
                epochs_usage.append(link.usage - start)
        per_epoch = epochs_usage[0] | epochs_usage[1]
        return RefreshPlan(epochs, steps_per_epoch, dict(per_epoch), dict(per_step), dict(validation),
                           val_layouts, state_layouts)

    plans = [contextvars.Context().run(run, schedule) for schedule in schedules]
    first = plans[0]
    merged = [Counter(), Counter(), Counter()]
    for plan in plans:
        for total, part in zip(merged, (plan.per_epoch, plan.per_step, plan.validation), strict=True):
            total |= Counter(part)
    return RefreshPlan(epochs, steps_per_epoch, dict(merged[0]), dict(merged[1]), dict(merged[2]),
                       first.val_layouts, first.state_layouts)


