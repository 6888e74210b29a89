"""The key owner's half of a HETAL run, and the in-process training every run goes through.

``prepare_hetal`` loads and normalises the features, makes keys, encrypts both sets and the initial
model; the client CLI uploads what it returns to a server. ``train_in_process`` trains that job in
this process exactly as the server would (``training.job``'s builder, the server's loader, the key
owner's plan of the job): ``hetal.run`` trains through it, and ``run_in_process`` is the reference a
remote run must match.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..ckks.secret import SecretContext
from ..client.key_owner import KeyOwner
from ..client.policy import plan_job
from ..data.dataset import EncDataset
from ..nn.linear import Linear
from ..protocol.wire import wire_cuts
from ..storage.dataset import StreamingLoader
from ..tensor.enctensor import EncTensor
from ..tensor.layout import next_pow2
from ..training.early_stopping import EarlyStopping
from ..training.job import EXACT_SOFTMAX, build_hetal_linear, validate_job
from ..training.job import softmax_config as job_softmax_config
from ..training.trainer import FitResult, Trainer
from ..training.unit_choice import choose_unit
from .config import HetalConfig


def load_features(cfg: HetalConfig) -> Any:
    """The dataset's plaintext features (client side), subset as the config asks."""
    from .. import datasets

    if cfg.dataset == "digits":
        splits = datasets.load_digits_features(seed=cfg.seed)
    elif cfg.dataset == "mnist":
        splits = datasets.load_mnist_features(seed=cfg.seed, **_sizes(cfg))
    elif cfg.dataset == "snips":
        splits = datasets.load_snips_features(data_dir=cfg.data_dir, seed=cfg.seed, **_sizes(cfg, "max_"))
    elif cfg.dataset == "own":
        splits = load_own(cfg).splits
    else:
        raise ValueError(f"unknown dataset {cfg.dataset!r}")
    return splits


def load_own(cfg: HetalConfig, progress: bool = True) -> Any:
    """The client's own data (``cfg.data``) as ``datasets.own_data.OwnData``: features, splits, backbone."""
    from ..datasets.own_data import load_own_data

    if cfg.data is None:
        raise ValueError("dataset 'own' needs cfg.data: a folder of images, a CSV/JSONL of texts or features")
    return load_own_data(cfg.data, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction, seed=cfg.seed,
                         text_column=cfg.text_column, label_column=cfg.label_column, image_size=cfg.image_size,
                         cache_dir=cfg.cache_dir, progress=progress)


def _sizes(cfg: HetalConfig, prefix: str = "n_") -> dict[str, int]:
    names = {"n_train": cfg.n_train, "n_val": cfg.n_val, "n_test": cfg.n_test}
    return {prefix + k[2:]: v for k, v in names.items() if v is not None}


def normalise(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Standardise with the training statistics, then scale rows to unit norm.

    Unit rows bound each step's change of the logits by 2·lr, which keeps them well inside the
    softmax's input domain; the plaintext twin sees the same features.
    """
    mean, std = normalisation_stats(train)
    return [normalise_with(t, mean, std) for t in (train, *others)]


def normalisation_stats(train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The training features' column mean and standard deviation (float64), which inference reuses."""
    return train.double().mean(0), train.double().std(0).clamp_min(1e-6)


def normalise_with(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Standardise ``x`` with the training statistics, then scale each row to unit norm (as training saw it)."""
    z = (x.double() - mean) / std
    return z / z.norm(dim=1, keepdim=True).clamp_min(1e-12)


def rotation_steps(unit: tuple[int, int], num_classes: int, softmax: bool = True) -> list[int]:
    """Every rotation a training step needs: the matrix products' and (unless the key owner evaluates
    it: ``softmax=False``) the softmax's."""
    from ..linalg.steps import hetal_rotation_steps

    return hetal_rotation_steps(unit, next_pow2(num_classes), softmax=softmax)


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
                   secret: SecretContext | None = None, seeded: bool = False) -> EncryptedSplits:
    """Normalise the features, make keys (unless given) for the unit ``choose_unit`` picks, and encrypt
    the training and validation sets (the validation labels stay with the key owner). ``seeded``: in
    SEAL's seeded form, half the bytes to save and upload."""
    (xtr, ytr), (xva, yva), (xte, yte) = splits.train, splits.val, splits.test
    xtr, xva, xte = normalise(xtr, xva, xte)
    c, d = splits.num_classes, xtr.shape[1]
    unit = choose_unit(cfg.batch_size, d + 1, c, cfg.preset)
    exact = cfg.softmax == EXACT_SOFTMAX  # the key owner evaluates the softmax: no softmax keys, labels kept here
    secret = secret or SecretContext.create(cfg.preset, rotations=rotation_steps(unit, c, softmax=not exact),
                                            backend=backend)
    owner = KeyOwner(secret, EarlyStopping(patience=cfg.patience))
    train = owner.encrypt_dataset(xtr, ytr, num_classes=c, batch_size=cfg.batch_size, seed=cfg.seed, unit=unit,
                                  keep_labels=exact, seeded=seeded)
    val = owner.encrypt_dataset(xva, yva, num_classes=c, batch_size=cfg.batch_size, name="val", seeded=seeded,
                                keep_labels=True, shuffle=False, unit=unit)
    return EncryptedSplits(owner, train, val, (xtr, ytr), (xva, yva), (xte, yte), d, c)


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
    # what the plaintext twin starts from: the normalised train / validation sets and [W | b]
    train_plain: tuple[torch.Tensor, torch.Tensor] | None = None
    val_plain: tuple[torch.Tensor, torch.Tensor] | None = None
    init_plain: torch.Tensor | None = None
    # what inference needs besides the weights: class names, backbone, the training normalisation
    inference: dict[str, Any] | None = None

    def job(self, checkpoint_every: int = 1) -> dict[str, Any]:
        """The training job to submit to the server."""
        cfg = self.config
        return {"model": "hetal-linear", "in_features": self.in_features, "out_features": self.num_classes,
                "bias": True, "optimizer": cfg.optimizer, "lr": cfg.lr, "momentum": cfg.momentum,
                "epochs": cfg.epochs, "max_steps": cfg.max_steps, "seed": cfg.seed,
                "checkpoint_every": checkpoint_every, "softmax": cfg.softmax}


def prepare_hetal(cfg: HetalConfig, splits: Any = None, secret: SecretContext | None = None, *,
                  for_upload: bool = False) -> PreparedRun:
    """Load and normalise features, make keys (unless given), encrypt both sets and the initial model.
    ``for_upload``: the sets will be written and sent, so they are encrypted in SEAL's seeded form
    (half the bytes) unless ``ENCRYPTED_TORCH_WIRE_CUTS`` leaves ``seeded`` out."""
    backbone, skipped = None, 0
    if splits is None and cfg.dataset == "own":
        own = load_own(cfg)
        splits, backbone, skipped = own.splits, own.backbone, len(own.summary.skipped)
    splits = splits if splits is not None else load_features(cfg)
    data = encrypt_splits(cfg, splits, backend=cfg.backend, secret=secret,
                          seeded=for_upload and "seeded" in wire_cuts())
    owner, d, c = data.owner, data.features, data.classes
    torch.manual_seed(cfg.seed)
    model = Linear(d, c, init=cfg.init)
    init_plain = model.packed_plain().clone()
    model.encrypt(owner.public_context, unit=data.train.unit)
    mean, std = normalisation_stats(splits.train[0])
    inference = {"classes": list(getattr(splits, "classes", [str(i) for i in range(c)])),
                 "backbone": backbone or {"kind": "features", "name": cfg.dataset, "num_features": d},
                 "normalisation": {"mean": mean, "std": std, "unit_rows": True},
                 "splits": {"train": len(splits.train[1]), "val": len(splits.val[1]), "test": len(splits.test[1]),
                            "seed": cfg.seed},
                 "skipped": skipped}
    return PreparedRun(cfg, owner.secret, owner, data.train, data.val, {"weight_bias": model.weight_bias.detach()},
                       data.test_plain, d, c, data.train_plain, data.val_plain, init_plain, inference)


def train_in_process(prep: PreparedRun, key_owner: KeyOwner | None = None, *,
                     progress: bool = False) -> tuple[Linear, FitResult]:
    """Train in this process exactly as the server would; the encrypted model (best weights loaded)."""
    job = validate_job(prep.job(), {"hetal-linear": build_hetal_linear})
    owner = key_owner or prep.key_owner
    owner.expect(plan_job(owner.public_context, job, prep.init, prep.train, prep.val),  # as a remote run does
                 softmax_config=job_softmax_config(job))
    model, optimizer, criterion = build_hetal_linear(owner.public_context, job, prep.init, prep.train.unit)
    loader = StreamingLoader(prep.train, shuffle=True, seed=job["seed"], max_steps=job["max_steps"])
    result = Trainer(model, optimizer, owner, criterion, progress=progress).fit(loader, prep.val, job["epochs"])
    return model, result


def run_in_process(prep: PreparedRun, key_owner: KeyOwner | None = None) -> tuple[torch.nn.Linear, FitResult]:
    """Train in this process exactly as the server would (the reference a remote run must match)."""
    model, result = train_in_process(prep, key_owner)
    return decrypt_linear(dict(model.state_dict()), prep.secret, prep.in_features), result


def decrypt_linear(state: dict[str, EncTensor], secret: SecretContext, in_features: int) -> torch.nn.Linear:
    """A plaintext float64 torch.nn.Linear from the encrypted [W | b] (client side): ``Linear.to_torch``."""
    return Linear.from_state_dict(state, in_features).to_torch(secret)
