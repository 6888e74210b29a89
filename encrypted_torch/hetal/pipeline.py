"""A whole HETAL run in one process, roles kept apart by type (HETAL.md §1).

Client: extract features, normalise, create keys, encrypt train (with labels) and validation
(labels kept). Server: train with encrypted early stopping, holding a PublicContext only.
Client: decrypt the best model, report test accuracy next to the plaintext twin's. The client's
half is ``hetal.prepare.prepare_hetal`` and the training ``hetal.prepare.train_in_process``, the
same as the client CLI's and the in-process reference a remote run is checked against.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from ..training.trainer import FitResult
from .config import HetalConfig
from .plaintext import PlainResult, accuracy, train_plaintext
from .prepare import (
    EncryptedSplits,
    encrypt_splits,
    load_features,
    normalise,
    prepare_hetal,
    rotation_steps,
    train_in_process,
)

# The client's preparation lives in hetal.prepare; its pieces stay importable from here.
__all__ = ["EncryptedSplits", "RunReport", "encrypt_splits", "load_features", "normalise", "rotation_steps", "run"]


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


def run(cfg: HetalConfig, progress: bool = True, splits: Any = None) -> RunReport:
    """Run the encrypted training and its plaintext twin; return both results."""
    t0 = time.perf_counter()

    # Client: keys, encrypted data and the encrypted initial model.
    prep = prepare_hetal(cfg, splits)
    client, c = prep.key_owner, prep.num_classes
    setup = time.perf_counter() - t0

    # Server: holds secret.public() only (through the encrypted tensors); the run a server does.
    model, enc = train_in_process(prep, progress=progress)

    # Client: decrypt the best model, evaluate locally.
    (xtr, ytr), (xva, yva), (xte, yte) = prep.train_plain, prep.val_plain, prep.test
    enc_model = model.to_torch(prep.secret)
    enc_acc = accuracy(enc_model, xte, yte)
    order = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(cfg.seed))
    plain = train_plaintext(cfg, xtr, ytr, xva, yva, c, prep.init_plain, order)
    plain_acc = accuracy(plain.model, xte, yte)
    report = RunReport(cfg, enc_acc, plain_acc, enc, plain, client.best_epoch, setup, client.history)
    report.model, report.client = model, client
    return report
