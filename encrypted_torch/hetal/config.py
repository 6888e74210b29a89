"""A HETAL run's settings, with HETAL's hyperparameters where they apply (HETAL.md §5)."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from typing import Any

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
    # the client's own data (dataset "own"): a folder of images, a CSV/JSONL of texts, or features
    data: str | None = None
    text_column: str | None = None
    label_column: str | None = None
    image_size: int = 160
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    cache_dir: str | None = None

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
    if dataset == "own":
        return HetalConfig(dataset="own", **{k: v for k, v in overrides.items() if v is not None})
    if dataset not in DATASET_DEFAULTS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(DATASET_DEFAULTS)}")
    values = {**DATASET_DEFAULTS[dataset], **{k: v for k, v in overrides.items() if v is not None}}
    return HetalConfig(dataset=dataset, **values)


_RUN_OPTIONS = ("preset", "batch_size", "lr", "epochs", "patience", "optimizer", "softmax", "n_train", "n_val",
                "n_test", "max_steps", "data_dir", "seed", "backend")
_OWN_OPTIONS = ("data", "text_column", "label_column", "image_size", "val_fraction", "test_fraction", "cache_dir")


def add_config_arguments(ap: argparse.ArgumentParser, default_dataset: str) -> None:
    """The command-line options that set a HetalConfig (shared by the HETAL and client CLIs)."""
    ap.add_argument("--dataset", choices=sorted(DATASET_DEFAULTS), default=default_dataset)
    ap.add_argument("--preset", choices=["test", "fast", "deep"])
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--patience", type=int)
    ap.add_argument("--optimizer", choices=["nesterov", "nag", "sgd"])
    ap.add_argument("--softmax", choices=[*SOFTMAX_PRESETS, "exact"],
                    help="softmax approximation (SoftmaxConfig.preset; default: 'default', Rmax = 128), or 'exact': "
                         "the key owner evaluates the exact softmax (opt-in protocol; the labels stay with it)")
    ap.add_argument("--n-train", type=int)
    ap.add_argument("--n-val", type=int)
    ap.add_argument("--n-test", type=int)
    ap.add_argument("--max-steps", type=int, help="batches per epoch at most (benchmarks)")
    ap.add_argument("--data-dir", help="SNIPS directory (train.txt, dev.txt, test.txt)")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--backend", choices=["seal", "plain"],
                    help="'plain': the unencrypted slot backend with the same op counts (tests; a server needs "
                         "--allow-plain-backend)")
    own = ap.add_argument_group("your own data (instead of --dataset)")
    own.add_argument("--data", help="a folder with one subfolder of images per class, a CSV/TSV/JSONL of texts "
                                    "with a label column, or features (.npz, .csv, .pt)")
    own.add_argument("--text-column", help="the texts' column (default: text, utterance, sentence, ...)")
    own.add_argument("--label-column", help="the labels' column (default: label, class, intent, ...)")
    own.add_argument("--image-size", type=int, help="images are resized to this square size (default 160)")
    own.add_argument("--val-fraction", type=float, help="validation share (default 0.1)")
    own.add_argument("--test-fraction", type=float, help="test share (default 0.2)")
    own.add_argument("--cache-dir", help="where extracted features are cached (default ~/.cache/encrypted_torch)")


def config_from_args(args: argparse.Namespace) -> HetalConfig:
    """HetalConfig from options added by ``add_config_arguments`` (unset ones keep the dataset's defaults)."""
    return resolve_config(args)[0]


def resolve_config(args: argparse.Namespace) -> tuple[HetalConfig, Any, str]:
    """(config, own data's scan or None, the settings explained): ``--data`` gets defaults scaled to the data
    (``hetal.defaults``), each printed with its reason or the option that overrode it."""
    given = {name: getattr(args, name, None) for name in _RUN_OPTIONS + _OWN_OPTIONS}
    if given["data"] is None:
        cfg = config_for(args.dataset, **{k: given[k] for k in _RUN_OPTIONS})
        return cfg, None, ""
    from ..datasets.own_data import OwnDataError, check_preset, scan_data
    from .defaults import explain, suggest

    builtin_only = [f"--{k.replace('_', '-')}" for k in ("n_train", "n_val", "n_test", "data_dir")
                    if given[k] is not None]
    if builtin_only:
        raise OwnDataError(f"{', '.join(builtin_only)} apply to the built-in datasets; with --data, set the split with "
                           "--val-fraction and --test-fraction")

    summary = scan_data(given["data"], text_column=given["text_column"], label_column=given["label_column"],
                        image_size=given["image_size"] or 160)
    val = given["val_fraction"] if given["val_fraction"] is not None else 0.1
    test = given["test_fraction"] if given["test_fraction"] is not None else 0.2
    suggested = suggest(summary.num_samples, len(summary.classes), val, test)
    values = {k: s.value for k, s in suggested.items()}
    overridden = {k for k, v in given.items() if v is not None and k in values}
    values.update({k: v for k, v in given.items() if v is not None})
    cfg = config_for("own", **values)
    check_preset(len(summary.classes), cfg.preset)
    shown = {k: getattr(cfg, k) for k in ("preset", "batch_size", "lr", "epochs", "patience", "val_fraction",
                                          "test_fraction", "seed")}
    head = (f"{summary.kind} from {summary.path}: {summary.num_samples} samples, {len(summary.classes)} classes "
            f"({', '.join(f'{c}: {n}' for c, n in list(summary.counts.items())[:8])}"
            f"{', ...' if len(summary.classes) > 8 else ''}), "
            f"{summary.num_features} features{' from ' + summary.backbone if summary.backbone else ''}")
    return cfg, summary, head + "\n" + explain(shown, suggested, overridden)
