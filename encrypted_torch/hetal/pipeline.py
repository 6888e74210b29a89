"""A whole HETAL run in one process, roles kept apart by type (HETAL.md §1).

Client: extract features, normalise, create keys, encrypt train (with labels) and validation
(labels kept). Server: train with encrypted early stopping, holding a PublicContext only.
Client: decrypt the best model, report test accuracy next to the plaintext twin's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from .. import optim
from ..approx.softmax import SoftmaxConfig
from ..ckks.secret import SecretContext
from ..client.key_owner import KeyOwner
from ..client.policy import plan_job
from ..data.dataset import DataLoader
from ..nn.linear import Linear
from ..nn.loss import CrossEntropyLoss
from ..tensor.layout import next_pow2
from ..training.early_stopping import EarlyStopping
from ..training.trainer import FitResult, Trainer
from ..training.unit_choice import choose_unit
from .config import HetalConfig
from .plaintext import PlainResult, accuracy, train_plaintext


@dataclass
class RunReport:
    config: HetalConfig
    enc_test_acc: float
    plain_test_acc: float
    enc: FitResult
    plain: PlainResult
    best_epoch: int
    setup_seconds: float
    client_history: list[dict]
    model: Any = None  # the server's encrypted model, best weights loaded
    client: Any = None  # the key owner

    def summary(self) -> dict[str, Any]:
        bd = self.enc.mean_breakdown()
        return {
            "dataset": self.config.dataset,
            "encrypted_test_acc": round(self.enc_test_acc, 4),
            "plaintext_test_acc": round(self.plain_test_acc, 4),
            "gap_points": round(100 * (self.plain_test_acc - self.enc_test_acc), 2),
            "epochs_run": self.enc.epochs_run,
            "best_epoch": self.best_epoch,
            "plain_epochs_run": self.plain.epochs_run,
            "steps": len(self.enc.steps),
            "seconds_per_step": round(self.enc.mean_step_seconds(), 3),
            "breakdown_seconds": {k: round(v, 3) for k, v in sorted(bd.items())},
            "refreshes_per_step": round(self.enc.refreshes_per_step(), 2),
            "plain_seconds_per_step": round(self.plain.step_seconds, 5),
            "setup_seconds": round(self.setup_seconds, 1),
        }


def load_features(cfg: HetalConfig) -> Any:
    """The dataset's plaintext features (client side), subset as the config asks."""
    from .. import datasets

    if cfg.dataset == "digits":
        splits = datasets.load_digits_features(seed=cfg.seed)
    elif cfg.dataset == "mnist":
        splits = datasets.load_mnist_features(seed=cfg.seed, **_sizes(cfg))
    elif cfg.dataset == "snips":
        splits = datasets.load_snips_features(data_dir=cfg.data_dir, seed=cfg.seed, **_sizes(cfg, "max_"))
    else:
        raise ValueError(f"unknown dataset {cfg.dataset!r}")
    return splits


def _sizes(cfg: HetalConfig, prefix: str = "n_") -> dict[str, int]:
    names = {"n_train": cfg.n_train, "n_val": cfg.n_val, "n_test": cfg.n_test}
    return {prefix + k[2:]: v for k, v in names.items() if v is not None}


def normalise(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Standardise with the training statistics, then scale rows to unit norm.

    Unit rows bound each step's change of the logits by 2·lr, which keeps them well inside the
    softmax's input domain; the plaintext twin sees the same features.
    """
    mean, std = train.double().mean(0), train.double().std(0).clamp_min(1e-6)
    out = []
    for t in (train, *others):
        z = (t.double() - mean) / std
        out.append(z / z.norm(dim=1, keepdim=True).clamp_min(1e-12))
    return out


def rotation_steps(unit: tuple[int, int], num_classes: int) -> list[int]:
    """Every rotation a training step needs: the matrix products' and the softmax's."""
    from ..linalg.steps import hetal_rotation_steps

    return hetal_rotation_steps(unit, next_pow2(num_classes))


def run(cfg: HetalConfig, progress: bool = True, splits: Any = None) -> RunReport:
    """Run the encrypted training and its plaintext twin; return both results."""
    t0 = time.perf_counter()
    splits = splits if splits is not None else load_features(cfg)

    # Client: keys and encrypted data.
    data = encrypt_splits(cfg, splits, backend=cfg.backend)
    (xtr, ytr), (xva, yva), (xte, yte) = data.train_plain, data.val_plain, data.test_plain
    client, train, val, c, d = data.owner, data.train, data.val, data.classes, data.features
    secret = client.secret
    torch.manual_seed(cfg.seed)
    model = Linear(d, c, init=cfg.init)
    init_packed = model.packed_plain().clone()
    setup = time.perf_counter() - t0

    # Server: holds secret.public() only (through the encrypted tensors).
    model.encrypt(client.public_context, unit=train.unit)
    opt = optim.from_name(cfg.optimizer, model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    loader = _Limited(DataLoader(train, shuffle=True, seed=cfg.seed), cfg.max_steps)
    job = {"model": "hetal-linear", "in_features": d, "out_features": c, "bias": True, "optimizer": cfg.optimizer,
           "lr": cfg.lr, "momentum": cfg.momentum, "epochs": cfg.epochs, "max_steps": cfg.max_steps,
           "seed": cfg.seed, "checkpoint_every": 1, "softmax": cfg.softmax}
    softmax = SoftmaxConfig.preset(cfg.softmax)
    client.expect(plan_job(client.public_context, job, dict(model.state_dict()), train, val),  # as remote runs
                  softmax_config=softmax)
    trainer = Trainer(model, opt, client, CrossEntropyLoss(softmax), progress=progress)
    enc = trainer.fit(loader, val, cfg.epochs)

    # Client: decrypt the best model, evaluate locally.
    enc_model = model.to_torch(secret).double()
    enc_acc = accuracy(enc_model, xte, yte)
    order = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(cfg.seed))
    plain = train_plaintext(cfg, xtr, ytr, xva, yva, c, init_packed, order)
    plain_acc = accuracy(plain.model, xte, yte)
    report = RunReport(cfg, enc_acc, plain_acc, enc, plain, client.best_epoch, setup, client.history)
    report.model, report.client = model, client
    return report


@dataclass
class EncryptedSplits:
    """The client side of a HETAL run: the key owner, the encrypted train / validation sets, and the
    normalised plaintext splits it keeps."""

    owner: KeyOwner
    train: Any
    val: Any
    train_plain: tuple[torch.Tensor, torch.Tensor]
    val_plain: tuple[torch.Tensor, torch.Tensor]
    test_plain: tuple[torch.Tensor, torch.Tensor]
    features: int
    classes: int


def encrypt_splits(cfg: HetalConfig, splits: Any, *, backend: str = "seal",
                   secret: SecretContext | None = None) -> EncryptedSplits:
    """Normalise the features, make keys (unless given) for the unit ``choose_unit`` picks, and encrypt
    the training and validation sets (the validation labels stay with the key owner)."""
    (xtr, ytr), (xva, yva), (xte, yte) = splits.train, splits.val, splits.test
    xtr, xva, xte = normalise(xtr, xva, xte)
    c, d = splits.num_classes, xtr.shape[1]
    unit = choose_unit(cfg.batch_size, d + 1, c, cfg.preset)
    secret = secret or SecretContext.create(cfg.preset, rotations=rotation_steps(unit, c), backend=backend)
    owner = KeyOwner(secret, EarlyStopping(patience=cfg.patience))
    train = owner.encrypt_dataset(xtr, ytr, num_classes=c, batch_size=cfg.batch_size, seed=cfg.seed, unit=unit)
    val = owner.encrypt_dataset(xva, yva, num_classes=c, batch_size=cfg.batch_size, name="val",
                                keep_labels=True, shuffle=False, unit=unit)
    return EncryptedSplits(owner, train, val, (xtr, ytr), (xva, yva), (xte, yte), d, c)


class _Limited:
    """A DataLoader that yields at most ``max_steps`` batches per epoch (benchmarks)."""

    def __init__(self, loader: DataLoader, max_steps: int | None) -> None:
        self.loader, self.max_steps = loader, max_steps

    def __len__(self) -> int:
        n = len(self.loader)
        return n if self.max_steps is None else min(n, self.max_steps)

    def __iter__(self):
        for i, b in enumerate(self.loader):
            if self.max_steps is not None and i >= self.max_steps:
                return
            yield b
