"""A HETAL run's settings, with HETAL's hyperparameters where they apply (HETAL.md §5)."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass

from ..approx.softmax import SOFTMAX_PRESETS


@dataclass
class HetalConfig:
    """Everything that defines a run; the encrypted run and its plaintext twin share it."""

    dataset: str = "mnist"
    preset: str = "fast"
    backend: str = "seal"  # "plain": the exact slot backend (tests, op counts)
    batch_size: int = 256
    lr: float = 1.0
    epochs: int = 10
    patience: int = 3
    optimizer: str = "nesterov"  # "nesterov" (torch SGD, nesterov=True), "nag" (Kim et al.), "sgd"
    momentum: float = 0.9
    init: str = "zeros"
    softmax: str = "default"  # SoftmaxConfig.preset: the server's softmax and the key owner's domain guard
    n_train: int | None = None
    n_val: int | None = None
    n_test: int | None = None
    max_steps: int | None = None  # stop each epoch early (benchmarks only)
    seed: int = 0
    data_dir: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


DATASET_DEFAULTS: dict[str, dict] = {
    # Small and fast: raw 8×8 pixels.
    "digits": dict(preset="fast", batch_size=256, lr=1.0, epochs=12),
    # 5000 real MNIST images through EfficientNet-Lite0 (1280-d).
    # All 5000 (3500 / 500 / 1000), 5 epochs: ~10 min on 2 cores (a 512×1281×10 step takes ~14 s).
    "mnist": dict(preset="fast", batch_size=512, lr=1.0, epochs=5, n_train=3500, n_val=500, n_test=1000),
    # HETAL's SNIPS with all-MiniLM-L6-v2 (384-d), 7 intents.
    "snips": dict(preset="fast", batch_size=512, lr=1.0, epochs=2, n_train=1024, n_val=256, n_test=700),
}


def config_for(dataset: str, **overrides: object) -> HetalConfig:
    """HetalConfig with the dataset's defaults, then ``overrides`` (None values ignored)."""
    if dataset not in DATASET_DEFAULTS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(DATASET_DEFAULTS)}")
    values = {**DATASET_DEFAULTS[dataset], **{k: v for k, v in overrides.items() if v is not None}}
    return HetalConfig(dataset=dataset, **values)


_RUN_OPTIONS = ("preset", "batch_size", "lr", "epochs", "patience", "optimizer", "softmax", "n_train", "n_val",
                "n_test", "max_steps", "data_dir", "seed")


def add_config_arguments(ap: argparse.ArgumentParser, default_dataset: str) -> None:
    """The command-line options that set a HetalConfig (shared by the HETAL and client CLIs)."""
    ap.add_argument("--dataset", choices=sorted(DATASET_DEFAULTS), default=default_dataset)
    ap.add_argument("--preset", choices=["test", "fast", "deep"])
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--patience", type=int)
    ap.add_argument("--optimizer", choices=["nesterov", "nag", "sgd"])
    ap.add_argument("--softmax", choices=list(SOFTMAX_PRESETS),
                    help="softmax approximation (SoftmaxConfig.preset; default: 'default', Rmax = 128)")
    ap.add_argument("--n-train", type=int)
    ap.add_argument("--n-val", type=int)
    ap.add_argument("--n-test", type=int)
    ap.add_argument("--max-steps", type=int, help="batches per epoch at most (benchmarks)")
    ap.add_argument("--data-dir", help="SNIPS directory (train.txt, dev.txt, test.txt)")
    ap.add_argument("--seed", type=int)


def config_from_args(args: argparse.Namespace) -> HetalConfig:
    """HetalConfig from options added by ``add_config_arguments`` (unset ones keep the dataset's defaults)."""
    return config_for(args.dataset, **{name: getattr(args, name) for name in _RUN_OPTIONS})
