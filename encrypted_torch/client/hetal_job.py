"""The key owner's half of a HETAL run, shared by the client CLI and the tests' in-process reference.

``prepare_hetal`` does what ``hetal.pipeline.run`` does before training (features, keys,
encrypted datasets, initial weights), and ``run_in_process`` what it does to train, so a
remote run and an in-process run start from the same bytes of plaintext.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..approx.softmax import SoftmaxConfig
from ..ckks.secret import SecretContext
from ..data.dataset import EncDataset
from ..hetal.config import HetalConfig
from ..nn.linear import Linear
from ..tensor.enctensor import EncTensor
from ..training.trainer import FitResult, Trainer
from .key_owner import KeyOwner
from .policy import plan_job


@dataclass
class PreparedRun:
    """Everything the key owner holds before training starts."""

    config: HetalConfig
    secret: SecretContext
    key_owner: KeyOwner
    train: EncDataset
    val: EncDataset
    init: dict[str, EncTensor]
    test: tuple[torch.Tensor, torch.Tensor]
    in_features: int
    num_classes: int

    def job(self, checkpoint_every: int = 1) -> dict[str, Any]:
        """The training job to submit to the server."""
        cfg = self.config
        return {"model": "hetal-linear", "in_features": self.in_features, "out_features": self.num_classes,
                "bias": True, "optimizer": cfg.optimizer, "lr": cfg.lr, "momentum": cfg.momentum,
                "epochs": cfg.epochs, "max_steps": cfg.max_steps, "seed": cfg.seed,
                "checkpoint_every": checkpoint_every, "softmax": cfg.softmax}


def prepare_hetal(cfg: HetalConfig, splits: Any = None, secret: SecretContext | None = None) -> PreparedRun:
    """Load and normalise features, make keys (unless given), encrypt both sets and the initial model."""
    from ..hetal.pipeline import encrypt_splits, load_features

    splits = splits if splits is not None else load_features(cfg)
    data = encrypt_splits(cfg, splits, secret=secret)
    owner, d, c = data.owner, data.features, data.classes
    torch.manual_seed(cfg.seed)
    model = Linear(d, c, init=cfg.init).encrypt(owner.public_context, unit=data.train.unit)
    return PreparedRun(cfg, owner.secret, owner, data.train, data.val,
                       {"weight_bias": model.weight_bias.detach()}, data.test_plain, d, c)


def run_in_process(prep: PreparedRun, key_owner: KeyOwner | None = None) -> tuple[torch.nn.Linear, FitResult]:
    """Train in this process exactly as the server would (the reference a remote run must match)."""
    from ..server.job import build_hetal_linear, validate_job
    from ..storage.dataset import StreamingLoader

    job = validate_job(prep.job(), {"hetal-linear": build_hetal_linear})
    owner = key_owner or prep.key_owner
    owner.expect(plan_job(owner.public_context, job, prep.init, prep.train, prep.val),  # as a remote run does
                 softmax_config=SoftmaxConfig.preset(job["softmax"]))
    model, optimizer, criterion = build_hetal_linear(owner.public_context, job, prep.init, prep.train.unit)
    loader = StreamingLoader(prep.train, shuffle=True, seed=job["seed"], max_steps=job["max_steps"])
    result = Trainer(model, optimizer, owner, criterion, progress=False).fit(loader, prep.val, job["epochs"])
    return decrypt_linear(dict(model.state_dict()), prep.secret, prep.in_features), result


def decrypt_linear(state: dict[str, EncTensor], secret: SecretContext, in_features: int) -> torch.nn.Linear:
    """A plaintext float64 torch.nn.Linear from the encrypted [W | b] (client side): ``Linear.to_torch``."""
    return Linear.from_state_dict(state, in_features).to_torch(secret)
