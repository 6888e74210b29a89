"""The server's training loop: encrypted steps, encrypted validation, the key owner's stop bit.

Reads like a PyTorch loop: zero_grad, forward, loss, backward, step. Every step is timed by
section (matmul, softmax, optimizer, refresh) and its operations and refreshes are counted.
"""

from __future__ import annotations

import itertools
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

from tqdm import tqdm

from ..autograd.function import no_grad
from ..ckks.counters import count_ops
from ..ckks.evaluator import Cipher
from ..data.dataset import DataLoader, EncBatch, EncDataset, KeptLabels
from ..errors import EncryptionRequiredError, KeyOwnerRequiredError, ShapeError
from ..nn.loss import CrossEntropyLoss
from ..nn.module import Module
from ..optim.optimizer import EncOptimizer
from ..profiling import section, timing
from ..refresh import refresh_stage, refresh_with
from ..tensor.enctensor import EncTensor
from .key_owner_link import KeyOwnerLink


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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FitResult:
        return cls([StepRecord(**s) for s in d["steps"]], list(d["epochs"]), int(d["stopped_epoch"]),
                   int(d["epochs_run"]))


class TrainerCallback(Protocol):
    """Hooks the Trainer calls (checkpointing, progress, cancellation); both are optional.

    ``on_step_end`` runs after a step's update, ``on_epoch_end`` after the key owner's verdict
    has been applied; at both points ``trainer.state_dict()`` is a consistent resume point.
    """

    def on_step_end(self, trainer: Trainer, epoch: int, step: int) -> None: ...

    def on_epoch_end(self, trainer: Trainer, epoch: int) -> None: ...


@runtime_checkable
class StartsJobs(Protocol):
    """An in-process key owner that can start a new job (``client.KeyOwner``). A network link to
    the key owner is not one: a server must never be able to reset the key owner's records."""

    def begin_job(self) -> None: ...


class _TimedRefresher:
    """Charges refresh round trips to the 'refresh' section."""

    def __init__(self, link: KeyOwnerLink) -> None:
        self.link = link

    def refresh(self, ciphers: Sequence[Cipher], stage: str = "", level: int | None = None) -> list[Cipher]:
        with section("refresh"):
            return refresh_stage(self.link, ciphers, stage, level)

    def softmax_gradient(self, logits: EncTensor, labels: KeptLabels, level: int | None = None) -> EncTensor:
        """The key owner's exact (P − Y)/b for these logits (``nn.KeyOwnerCrossEntropyLoss``)."""
        ask = getattr(self.link, "softmax_gradient", None)
        if ask is None:
            raise KeyOwnerRequiredError(f"{type(self.link).__name__} cannot evaluate the softmax; the exact-softmax "
                                        "loss needs a key owner that can (client.KeyOwner, or a client connected "
                                        "to the server)")
        return ask(logits, labels, level=level)  # timed as "softmax" by the loss Function


class Trainer:
    """Encrypted fine-tuning with validation-based early stopping decided by the key owner.

    ``callbacks`` (``TrainerCallback``) see every step and epoch end; ``state_dict()`` /
    ``load_state_dict()`` save and restore a resume point, mid-epoch included (the loader must
    then offer ``rng_state``/``set_rng_state``, and ``iter_from(k)`` to skip k batches unread).
    """

    def __init__(self, model: Module, optimizer: EncOptimizer, key_owner: KeyOwnerLink,
                 criterion: Any = None, progress: bool = True, *,
                 callbacks: Sequence[TrainerCallback] = ()) -> None:
        self.model, self.optimizer, self.key_owner = model, optimizer, key_owner
        self.criterion = criterion or CrossEntropyLoss()
        self.progress = progress
        self.refresher = _TimedRefresher(key_owner)
        self.callbacks = list(callbacks)
        self.result = FitResult()
        self._epoch, self._step, self._epoch_rng = 0, 0, None
        self._resume: dict[str, Any] | None = None
        # the exact-softmax loss takes the key owner's labels instead of encrypted ones
        self._labels_stay = bool(getattr(self.criterion, "labels_stay_with_key_owner", False))

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

    def validation_logits(self, val: Iterable[Any]) -> list[EncTensor]:
        with no_grad(), refresh_with(self.refresher):
            return [self.model(_unpack(b)[0]) for b in val]

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

    def fit(self, train: EncDataset | Iterable[Any], val: EncDataset | Iterable[Any] | None = None,
            epochs: int = 1, start_epoch: int = 0, result: FitResult | None = None, *,
            resume: bool = False) -> FitResult:
        """Train up to ``epochs`` epochs; stop when the key owner says so; load the best weights.

        ``train``: an EncDataset (shuffled by batch each epoch) or any iterable of ``(x, y)``
        batches (EncBatch, tuples, a DataLoader). ``val``: a validation set whose labels the key
        owner kept (``encrypt_dataset(..., keep_labels=True)``); None trains every epoch without
        early stopping and keeps the last weights. Each call is a new job for an in-process key
        owner (its early stopping starts over); ``resume=True`` continues the key owner's job.
        After ``load_state_dict`` it continues from the saved position instead of ``start_epoch``.

        >>> result = Trainer(model, opt, key_owner=owner).fit(train, val, epochs=5)  # doctest: +SKIP
        """
        loader = DataLoader(train, shuffle=True) if isinstance(train, EncDataset) else train
        resume_point, self._resume = self._resume, None
        _check_validation_set(val)
        if val is None:
            warnings.warn("fit without a validation set: no early stopping; the model keeps the last "
                          "epoch's weights", UserWarning, stacklevel=2)
        if resume_point is None and not resume and isinstance(self.key_owner, StartsJobs):
            self.key_owner.begin_job()
        skip = 0
        if resume_point is not None:
            start_epoch, skip, result = resume_point["epoch"], resume_point["step"], resume_point["result"]
            if resume_point["loader_rng"] is not None:
                loader.set_rng_state(_as_tuples(resume_point["loader_rng"]))
        result = self.result = result or FitResult()
        for epoch in range(start_epoch, epochs):
            if result.stopped_epoch >= 0:
                break
            self._epoch, self._step = epoch, skip
            self._epoch_rng = _rng_state(loader)
            total = max(0, len(loader) - skip) if hasattr(loader, "__len__") else None
            bar = tqdm(_iter_from(loader, skip), total=total, desc=f"epoch {epoch + 1}/{epochs}",
                       disable=not self.progress, leave=False)
            for step, batch in enumerate(bar, start=skip):
                rec = self.train_step(*_unpack(batch, labels=True, kept=self._labels_stay), epoch, step)
                result.steps.append(rec)
                self._step = step + 1
                bar.set_postfix(step_s=f"{rec.seconds:.2f}", level=rec.weight_level,
                                refreshes=rec.ops["refreshes"])
                self._notify("on_step_end", epoch, step)
            skip = 0
            stop = False
            if val is not None:
                with count_ops() as ops:
                    logits = self.validation_logits(val)
                    verdict = self.key_owner.end_epoch(epoch, getattr(val, "name", "val"), logits,
                                                       self._state_to_refresh())
                self._load_refreshed(verdict.refreshed)
                stop = verdict.stop
                result.epochs.append({"epoch": epoch, "validation_refreshes": ops.refreshes, "stop": stop})
            else:
                result.epochs.append({"epoch": epoch, "validation_refreshes": 0, "stop": False})
            result.epochs_run = epoch + 1
            if stop:
                result.stopped_epoch = epoch
            self._epoch, self._step = epoch + 1, 0
            self._epoch_rng = _rng_state(loader)  # the next epoch's shuffle starts from here
            self._notify("on_epoch_end", epoch)
            if stop:
                break
        if val is not None:
            self.model.load_state_dict({k[6:]: v for k, v in self.key_owner.best_state().items()
                                        if k.startswith("model.")})
        return result

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue ``fit`` from here: encrypted weights and optimizer state,
        epoch and step, the loader's RNG state at the epoch's start, and the records so far."""
        return {"epoch": self._epoch, "step": self._step, "loader_rng": self._epoch_rng,
                "model": dict(self.model.state_dict()), "optimizer": self.optimizer.state_dict(),
                "result": self.result.as_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore weights and optimizer state now; the next ``fit`` resumes at the saved position."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        result = state["result"]
        self._resume = {"epoch": int(state["epoch"]), "step": int(state["step"]),
                        "loader_rng": state["loader_rng"],
                        "result": result if isinstance(result, FitResult) else FitResult.from_dict(result)}

    def _notify(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, hook, None)
            if fn is not None:
                fn(self, *args)


def _unpack(batch: Any, labels: bool = False, kept: bool = False) -> tuple[EncTensor, Any]:
    """``(x, y)`` of an EncBatch or a pair; typed errors for plaintext or label-less batches.
    ``kept``: the loss takes labels the key owner kept (an EncBatch's ``kept_labels``)."""
    try:
        x, y = batch
    except (TypeError, ValueError):
        raise ShapeError(f"a batch must be an (x, y) pair of EncTensors, got {type(batch).__name__}") from None
    if kept and labels:
        y = batch.kept_labels if isinstance(batch, EncBatch) and y is None else y
        if not isinstance(y, KeptLabels):
            raise ShapeError("the exact-softmax loss trains on labels the key owner kept: encrypt the training "
                             "set with keep_labels=True (its batches then carry no encrypted labels)")
    if not isinstance(x, EncTensor):
        raise EncryptionRequiredError(f"a batch holds a plaintext {type(x).__name__}; encrypt the data "
                                      "first: key_owner.encrypt_dataset(features, labels, ...)")
    if labels and y is None:
        raise ShapeError("a training batch without labels: this set was encrypted with keep_labels=True "
                         "(a validation set); encrypt the training set without keep_labels")
    return x, y


def _check_validation_set(val: Any) -> None:
    """A validation set's labels stay with the key owner: refuse one that carries encrypted labels."""
    if isinstance(val, EncDataset) and val.has_labels:
        raise ShapeError(f"validation set {val.name!r} carries encrypted labels, so the key owner has none "
                         "to judge it with; encrypt it with keep_labels=True (and a name other than the "
                         "training set's): key_owner.encrypt_dataset(x, y, ..., name='val', keep_labels=True)")


def _rng_state(loader: Any) -> Any:
    get = getattr(loader, "rng_state", None)
    return get() if get is not None else None


def _iter_from(loader: Any, skip: int) -> Iterator[EncBatch]:
    if skip == 0:
        return iter(loader)
    if hasattr(loader, "iter_from"):
        return loader.iter_from(skip)
    return itertools.islice(iter(loader), skip, None)


def _as_tuples(obj: Any) -> Any:
    """A JSON round trip turns random.getstate()'s tuples into lists; setstate wants tuples."""
    return tuple(_as_tuples(v) for v in obj) if isinstance(obj, (list, tuple)) else obj


def fit(model: Module, optimizer: EncOptimizer, train: EncDataset | Iterable[Any],
        val: EncDataset | Iterable[Any] | None, epochs: int, *, key_owner: KeyOwnerLink, criterion: Any = None,
        progress: bool = True, resume: bool = False) -> FitResult:
    """Functional form of ``Trainer(...).fit(...)``."""
    return Trainer(model, optimizer, key_owner, criterion, progress).fit(train, val, epochs, resume=resume)
