"""The key owner (client): encrypts its data, answers refreshes, judges epochs, keeps the best model.

HETAL.md §1: at each epoch end the server sends encrypted validation logits and the state to
refresh; the key owner computes the validation loss in float64 from the decrypted logits and
its own labels, keeps the decrypted weights of its best epoch, and answers with fresh
encryptions and one continue/stop bit.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from ..approx.softmax import SoftmaxConfig
from ..ckks.evaluator import Cipher
from ..ckks.params import CKKSParams
from ..ckks.secret import SecretContext
from ..data.dataset import EncDataset, KeptLabels
from ..errors import DomainError, ShapeError
from ..functional.domain import StageBounds, stage_bounds
from ..tensor.enctensor import EncTensor, encrypt
from ..training.early_stopping import EarlyStopping
from ..training.key_owner_link import EpochVerdict
from ..training.refresh_plan import KEY_OWNER_SOFTMAX, RefreshPlan
from .encrypt_data import encrypt_batches
from .policy import KeyOwnerPolicy


class KeyOwner:
    """Client-side party holding the SecretContext; implements the server's ``KeyOwnerLink``.

    It works wherever a SecretContext does (``owner.decrypt(x)``, ``loss.value(owner)``,
    ``model.to_torch(owner)``, ``refresh_with(owner)``): those calls go to its secret context.
    """

    def __init__(self, secret: SecretContext, early_stopping: EarlyStopping | None = None, *,
                 softmax_config: SoftmaxConfig | None = None) -> None:
        self.secret = secret
        self.early_stopping = early_stopping or EarlyStopping(patience=3)
        self._early_stopping_config = copy.deepcopy(self.early_stopping)
        self.softmax_config = softmax_config or SoftmaxConfig()
        self.policy = KeyOwnerPolicy()
        self.history: list[dict[str, float]] = []
        self.past_jobs: list[list[dict[str, float]]] = []
        self.num_classes: int | None = None
        self.unit: tuple[int, int] | None = None  # the block shape all its data sets share
        self._val_labels: dict[str, torch.Tensor] = {}  # labels kept here, by data set, in batch order
        self._batch_sizes: dict[str, int] = {}
        self._best: dict[str, torch.Tensor] | None = None
        self._layouts: dict[str, Any] = {}

    def expect(self, plan: RefreshPlan | None, *, replay_steps: int = 1,
               softmax_config: SoftmaxConfig | None = None) -> None:
        """Answer only what ``plan`` (this key owner's own copy of the job) asks from now on;
        ``softmax_config``: the job's softmax, whose domains the guard checks (default: unchanged)."""
        self.policy = KeyOwnerPolicy(plan, replay_steps=replay_steps)
        if softmax_config is not None:
            self.softmax_config = softmax_config

    def begin_job(self, plan: RefreshPlan | None = None) -> None:
        """Start a new job in this process (``Trainer.fit`` calls it): early stopping as configured,
        no best epoch, fresh verdict records under ``plan`` (default: the plan ``expect`` set).
        The history so far moves to ``past_jobs``; kept validation labels stay. Only an in-process
        caller can do this: the network link to a server offers no such request."""
        self.policy = KeyOwnerPolicy(plan if plan is not None else self.policy.plan,
                                     replay_steps=self.policy.replay_steps)
        self.early_stopping = copy.deepcopy(self._early_stopping_config)
        if self.history:
            self.past_jobs.append(self.history)
        self.history = []
        self._best, self._layouts = None, {}

    @property
    def public_context(self) -> Any:
        return self.secret.public()

    def public(self) -> Any:
        return self.secret.public()

    @property
    def params(self) -> CKKSParams:
        return self.secret.params

    @property
    def fingerprint(self) -> str:
        return self.secret.fingerprint

    @property
    def slots(self) -> int:
        return self.secret.slots

    @property
    def holds_secret_key(self) -> bool:
        return True

    def decrypt(self, x: Any) -> Any:
        """``secret.decrypt(x)``: an EncTensor to a float64 torch.Tensor (a Cipher to its slots)."""
        return self.secret.decrypt(x)

    def decrypt_vector(self, c: Cipher) -> np.ndarray:
        return self.secret.decrypt_vector(c)

    def encrypt_dataset(self, features: torch.Tensor, labels: torch.Tensor, *, num_classes: int,
                        batch_size: int, name: str = "train", keep_labels: bool = False,
                        shuffle: bool = True, seed: int = 0, unit: tuple[int, int] | None = None,
                        seeded: bool = False) -> EncDataset:
        """Shuffle, batch and encrypt. ``keep_labels=True`` (validation, or training with the exact
        softmax): the labels stay here. ``unit``: the block shape (default: the first data set's, so
        that all sets and the model agree; for the first, ``training.unit_choice.choose_unit``'s).
        ``seeded``: secret-key encryptions that save and upload in SEAL's seeded form (half the bytes;
        for data that will be written or sent: ``client``'s command line does)."""
        ctx = self.secret if seeded else self.public_context
        ds, order = encrypt_batches(features, labels, ctx, num_classes=num_classes,
                                    batch_size=batch_size, shuffle=shuffle, seed=seed, name=name,
                                    encrypt_labels=not keep_labels, unit=unit or self.unit)
        self.unit = self.unit or ds.unit
        if keep_labels:
            self._val_labels[name] = torch.as_tensor(labels, dtype=torch.int64)[order]
            self._batch_sizes[name] = batch_size
        self.num_classes = num_classes
        return ds

    def refresh(self, ciphers: Sequence[Cipher], stage: str = "", level: int | None = None) -> list[Cipher]:
        """Fresh encryptions of ``ciphers`` (at ``level``, default the top) if the job plans them, after
        the domain guard has seen the decrypted values (DomainError ends the job: the model would be
        silently wrong)."""
        self.policy.check_refresh(stage, [c.level for c in ciphers])
        return self.secret.refresh(ciphers, inspect=self._inspector(stage), level=self._reply_level(level))

    def refresh_payloads(self, ciphers: Sequence[Cipher], stage: str = "", level: int | None = None,
                         seeded: bool = True) -> tuple[list[list[Any]], list[bytes]]:
        """``refresh`` straight to wire bytes (``cipher_codec`` records and payloads), seeded: half the bytes."""
        self.policy.check_refresh(stage, [c.level for c in ciphers])
        return self.secret.refresh_payloads(ciphers, inspect=self._inspector(stage), level=self._reply_level(level),
                                            seeded=seeded)

    def _reply_level(self, level: int | None) -> int | None:
        """A reply level a request may name: a level of this context (None: the top)."""
        top = self.secret.params.levels
        if level is not None and not 0 <= level <= top:
            raise self.policy.refuse(f"a reply at level {level}; this context has levels 0..{top}")
        return level

    def _inspector(self, stage: str) -> Any:
        guard = self._guard()

        def inspect(values: list[np.ndarray]) -> None:
            try:
                guard.check(stage, np.stack([v.real for v in values]) if values else np.zeros(0))
            except DomainError as err:
                raise self.policy.end(err) from None

        return inspect

    def kept_labels(self, ref: KeptLabels) -> torch.Tensor:
        """The class indices of batch ``ref.index`` of a set encrypted with ``keep_labels=True``."""
        labels, size = self._val_labels.get(ref.dataset), self._batch_sizes.get(ref.dataset)
        if labels is None or size is None:
            raise self.policy.refuse(f"labels of data set {ref.dataset!r}, which this key owner did not keep")
        if not 0 <= ref.index * size < len(labels):
            raise self.policy.refuse(f"labels of batch {ref.index} of {ref.dataset!r}, which has "
                                     f"{-(-len(labels) // size)} batches")
        out = labels[ref.index * size : (ref.index + 1) * size]
        if len(out) != ref.rows:
            raise self.policy.refuse(f"batch {ref.index} of {ref.dataset!r} with {ref.rows} rows; it has {len(out)}")
        return out

    def softmax_gradient(self, logits: EncTensor, labels: KeptLabels, level: int | None = None) -> EncTensor:
        """Fresh encryption of (softmax(z) − Y)/b, in the logits' layout at ``level`` (default: the top),
        from the decrypted logits z of a training batch and the labels kept for it: the exact-softmax
        protocol (``nn.KeyOwnerCrossEntropyLoss``). Counted against the job's plan like a refresh."""
        def encrypt_blocks(vectors: list[np.ndarray]) -> EncTensor:
            blocks = self.secret.encrypt_vectors(vectors, level)
            n_b = logits.layout.grid[1]
            return logits._new([blocks[i : i + n_b] for i in range(0, len(blocks), n_b)])

        return self._gradient(logits, labels, level, encrypt_blocks)

    def softmax_gradient_payloads(self, logits: EncTensor, labels: KeptLabels, level: int | None = None,
                                  seeded: bool = True) -> tuple[list[list[Any]], list[bytes]]:
        """``softmax_gradient`` straight to wire bytes, seeded: the records and payloads of its blocks."""
        return self._gradient(logits, labels, level,
                              lambda vectors: self.secret.encrypt_payloads(vectors, level, seeded))

    def _gradient(self, logits: EncTensor, labels: KeptLabels, level: int | None, encrypt_blocks: Any) -> Any:
        self._reply_level(level)
        layout = logits.layout
        if layout.tiling != "horizontal" or layout.shape != (labels.rows, self.num_classes or -1):
            raise self.policy.refuse(f"logits of {layout.describe()} for a batch of {labels.rows} rows and "
                                     f"{self.num_classes} classes")
        if self.policy.plan is not None and labels.dataset != "train":  # a job trains on its "train" set only
            raise self.policy.refuse(f"softmax gradients on the labels of {labels.dataset!r}; "
                                     "the job trains on 'train'")
        self.policy.check_refresh(KEY_OWNER_SOFTMAX, [c.level for c in logits.ciphers()])
        y = self.kept_labels(labels)
        z = self.secret.decrypt(logits)
        grad = (torch.softmax(z, dim=1) - torch.nn.functional.one_hot(y, layout.shape[1]).double()) / labels.rows
        packed = layout.pack(grad.numpy())
        return encrypt_blocks([packed[i, j] for i in range(packed.shape[0]) for j in range(packed.shape[1])])

    def _guard(self) -> StageBounds:
        classes = self.num_classes or 2
        return _stage_bounds(self.softmax_config, classes, self.secret.params)

    def validation_metrics(self, dataset: str, val_logits: list[EncTensor]) -> dict[str, float]:
        """Cross-entropy (float64) and accuracy of decrypted logits against the kept labels."""
        if dataset not in self._val_labels:
            raise ShapeError(f"no validation labels kept for dataset {dataset!r}; encrypt the validation set "
                             "with encrypt_dataset(..., name='val', keep_labels=True)")
        logits = torch.cat([self.secret.decrypt(t) for t in val_logits])
        labels = self._val_labels[dataset]
        if logits.shape[0] != labels.shape[0]:
            raise ShapeError(f"{logits.shape[0]} validation logits for {labels.shape[0]} labels")
        radius = self.softmax_config.domain_radius
        peak = float(logits.abs().max()) if logits.numel() else 0.0
        if not peak <= radius:
            raise self.policy.end(DomainError(
                f"validation logits: a logit of magnitude {peak:.4g} lies outside the softmax's domain "
                f"[−{radius:g}, {radius:g}]; training on such logits gives a silently wrong model. Lower "
                "the learning rate, normalise the features, or use a wider SoftmaxConfig(domain_radius=...)"))
        loss = torch.nn.functional.cross_entropy(logits, labels).item()
        acc = (logits.argmax(1) == labels).double().mean().item()
        return {"val_loss": loss, "val_acc": acc}

    def end_epoch(self, epoch: int, dataset: str, val_logits: list[EncTensor],
                  state: dict[str, EncTensor]) -> EpochVerdict:
        """Judge ``epoch`` once: a repeated epoch (a resume) gets the recorded stop bit, never a new one."""
        recorded = self.policy.recorded_verdict(epoch)
        self.policy.check_epoch_end([t.layout for t in val_logits], {k: v.layout for k, v in state.items()})
        if recorded is not None:
            return EpochVerdict(self._fresh(state), recorded)
        metrics = self.validation_metrics(dataset, val_logits)
        improved, stop = self.early_stopping.update(epoch, metrics["val_loss"])
        plain = {k: self.secret.decrypt(v) for k, v in state.items()}
        if improved:
            self._best = plain
            self._layouts = {k: (v.layout, v.ctx) for k, v in state.items()}
        self.history.append({"epoch": epoch, **metrics, "improved": float(improved)})
        self.policy.record_verdict(epoch, stop)
        refreshed = {k: encrypt(plain[k], self.secret, layout=v.layout, seeded=True) for k, v in state.items()}
        return EpochVerdict(refreshed, stop)

    def _fresh(self, state: dict[str, EncTensor]) -> dict[str, EncTensor]:
        return {k: encrypt(self.secret.decrypt(v), self.secret, layout=v.layout, seeded=True) for k, v in state.items()}

    def best_state(self) -> dict[str, EncTensor]:
        """Fresh encryptions of the best epoch's weights (the server loads them at the end)."""
        self.policy.check_open()
        if self._best is None:
            raise ShapeError("no epoch has been judged yet")
        return {k: encrypt(v, self.secret, layout=self._layouts[k][0], seeded=True) for k, v in self._best.items()}

    @property
    def best_epoch(self) -> int:
        return self.early_stopping.best_epoch

    def state_dict(self) -> dict[str, Any]:
        """A copy of everything the key owner has learnt: early stopping, history, the best epoch's
        plaintext weights and their layouts, and the kept validation labels (plaintext: client only)."""
        best = None if self._best is None else {k: v.clone() for k, v in self._best.items()}
        return {"early_stopping": self.early_stopping.state_dict(),
                "history": [dict(h) for h in self.history],
                "best": best,
                "layouts": {k: layout for k, (layout, _) in self._layouts.items()},
                "val_labels": {k: v.clone() for k, v in self._val_labels.items()},
                "batch_sizes": dict(self._batch_sizes),
                "policy": self.policy.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()`` (e.g. to judge an epoch again after the server rolled back)."""
        self.early_stopping.load_state_dict(dict(state["early_stopping"]))
        self.history = [dict(h) for h in state["history"]]
        self._best = None if state["best"] is None else {k: v.clone() for k, v in state["best"].items()}
        self._layouts = {k: (layout, self.public_context) for k, layout in state["layouts"].items()}
        self._val_labels = {k: v.clone() for k, v in state["val_labels"].items()}
        self._batch_sizes = {str(k): int(v) for k, v in state.get("batch_sizes", {}).items()}
        if "policy" in state:
            self.policy.load_state_dict(state["policy"])


@lru_cache(maxsize=16)
def _stage_bounds(config: SoftmaxConfig, classes: int, params: Any) -> StageBounds:
    """The guard's bounds, computed once per (softmax config, class count, parameters)."""
    return stage_bounds(config, classes, params=params)
