"""A HETAL run's settings, with HETAL's hyperparameters where they apply (HETAL.md §5)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


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
    softmax: str = "hetal"
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
    # Sized for ~15-25 min on 2 cores: a 512×1281×10 step is minutes on CPU (benchmarks/train_step).
    "mnist": dict(preset="fast", batch_size=512, lr=1.0, epochs=2, n_train=1024, n_val=256, n_test=1000),
    # HETAL's SNIPS with all-MiniLM-L6-v2 (384-d), 7 intents.
    "snips": dict(preset="fast", batch_size=512, lr=1.0, epochs=2, n_train=1024, n_val=256, n_test=700),
}


def config_for(dataset: str, **overrides: object) -> HetalConfig:
    """HetalConfig with the dataset's defaults, then ``overrides`` (None values ignored)."""
    if dataset not in DATASET_DEFAULTS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(DATASET_DEFAULTS)}")
    values = {**DATASET_DEFAULTS[dataset], **{k: v for k, v in overrides.items() if v is not None}}
    return HetalConfig(dataset=dataset, **values)
