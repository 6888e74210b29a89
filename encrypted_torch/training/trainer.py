"""The server's training loop: encrypted steps, encrypted validation, the key owner's stop bit.

Reads like a PyTorch loop: zero_grad, forward, loss, backward, step. Every step is timed by
section (matmul, softmax, optimizer, refresh) and its operations and refreshes are counted.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from ..autograd.function import no_grad
from ..ckks.counters import count_ops
from ..ckks.evaluator import Cipher
from ..data.dataset import DataLoader, EncBatch, EncDataset
from ..nn.loss import CrossEntropyLoss
from ..nn.module import Module
from ..optim.optimizer import EncOptimizer
from ..profiling import section, timing
from ..refresh import refresh_with
from ..tensor.enctensor import EncTensor
from .protocol import KeyOwnerLink


@dataclass
class StepRecord:
    epoch: int
    step: int
    seconds: float
    breakdown: dict[str, float]
    ops: dict[str, int]
    weight_level: int


@dataclass
class FitResult:
    """What ``fit`` returns: per-step records, per-epoch records, and where it stopped."""

    steps: list[StepRecord] = field(default_factory=list)
    epochs: list[dict[str, Any]] = field(default_factory=list)
    stopped_epoch: int = -1
    epochs_run: int = 0

    def mean_step_seconds(self) -> float:
        return sum(s.seconds for s in self.steps) / max(1, len(self.steps))

    def mean_breakdown(self) -> dict[str, float]:
        keys = {k for s in self.steps for k in s.breakdown}
        return {k: sum(s.breakdown.get(k, 0.0) for s in self.steps) / max(1, len(self.steps)) for k in keys}

    def refreshes_per_step(self) -> float:
        return sum(s.ops["refreshes"] for s in self.steps) / max(1, len(self.steps))


class _TimedRefresher:
    """Charges refresh round trips to the 'refresh' section."""

    def __init__(self, link: KeyOwnerLink) -> None:
        self.link = link

    def refresh(self, ciphers: Sequence[Cipher]) -> list[Cipher]:
        with section("refresh"):
            return self.link.refresh(ciphers)


class Trainer:
    """Encrypted fine-tuning with validation-based early stopping decided by the key owner."""

    def __init__(self, model: Module, optimizer: EncOptimizer, key_owner: KeyOwnerLink,
                 criterion: Any = None, progress: bool = True) -> None:
        self.model, self.optimizer, self.key_owner = model, optimizer, key_owner
        self.criterion = criterion or CrossEntropyLoss()
        self.progress = progress
        self.refresher = _TimedRefresher(key_owner)

    def train_step(self, x: EncTensor, y: EncTensor, epoch: int = 0, step: int = 0) -> StepRecord:
        """One step: forward (DiagABT), fused softmax-CE, backward (DiagATB), optimizer update."""
        start = time.perf_counter()
        with refresh_with(self.refresher), count_ops() as ops, timing() as times:
            self.optimizer.zero_grad()
            logits = self.model(x)
            loss = self.criterion(logits, y)
            loss.backward()
            self.optimizer.step()
        level = min(p.level for p in self.model.parameters())
        return StepRecord(epoch, step, time.perf_counter() - start, dict(times), ops.as_dict(), level)

    def validation_logits(self, val: EncDataset) -> list[EncTensor]:
        with no_grad(), refresh_with(self.refresher):
            return [self.model(b.x) for b in val]

    def _state_to_refresh(self) -> dict[str, EncTensor]:
        state = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        for i, s in enumerate(self.optimizer.state.values()):
            for k, v in s.items():
                if isinstance(v, EncTensor):
                    state[f"optim.{i}.{k}"] = v
        return state

    def _load_refreshed(self, refreshed: dict[str, EncTensor]) -> None:
        self.model.load_state_dict({k[6:]: v for k, v in refreshed.items() if k.startswith("model.")})
        for i, s in enumerate(self.optimizer.state.values()):
            for k in list(s):
                if f"optim.{i}.{k}" in refreshed:
                    s[k] = refreshed[f"optim.{i}.{k}"]

    def fit(self, train: EncDataset | Iterable[EncBatch], val: EncDataset, epochs: int,
            start_epoch: int = 0, result: FitResult | None = None) -> FitResult:
        """Train up to ``epochs`` epochs; stop when the key owner says so; load the best weights."""
        loader = DataLoader(train, shuffle=True) if isinstance(train, EncDataset) else train
        result = result or FitResult()
        for epoch in range(start_epoch, epochs):
            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", disable=not self.progress, leave=False)
            for step, batch in enumerate(bar):
                rec = self.train_step(batch.x, batch.y, epoch, step)
                result.steps.append(rec)
                bar.set_postfix(step_s=f"{rec.seconds:.2f}", level=rec.weight_level,
                                refreshes=rec.ops["refreshes"])
            with count_ops() as ops:
                logits = self.validation_logits(val)
                verdict = self.key_owner.end_epoch(epoch, val.name, logits, self._state_to_refresh())
            self._load_refreshed(verdict.refreshed)
            result.epochs.append({"epoch": epoch, "validation_refreshes": ops.refreshes,
                                  "stop": verdict.stop})
            result.epochs_run = epoch + 1
            if verdict.stop:
                result.stopped_epoch = epoch
                break
        self.model.load_state_dict({k[6:]: v for k, v in self.key_owner.best_state().items()
                                    if k.startswith("model.")})
        return result


def fit(model: Module, optimizer: EncOptimizer, train: EncDataset | Iterable[EncBatch], val: EncDataset,
        epochs: int, *, key_owner: KeyOwnerLink, criterion: Any = None, progress: bool = True) -> FitResult:
    """Functional form of ``Trainer(...).fit(...)``."""
    return Trainer(model, optimizer, key_owner, criterion, progress).fit(train, val, epochs)
