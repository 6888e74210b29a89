"""scikit-learn's bundled 8x8 digits as raw pixel features: a tiny, offline, real dataset."""

from __future__ import annotations

import torch

from .splits import FeatureSplits, stratified_partition

__all__ = ["load_digits_features"]


def _fraction_sizes(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    if not 0 <= val_fraction < 1 or not 0 < test_fraction < 1:
        raise ValueError(f"need 0 <= val_fraction < 1 and 0 < test_fraction < 1, got "
                         f"{val_fraction} and {test_fraction}")
    if val_fraction + test_fraction >= 1:
        raise ValueError(f"val_fraction + test_fraction must be < 1, got "
                         f"{val_fraction + test_fraction}")
    n_val, n_test = round(val_fraction * n), round(test_fraction * n)
    return n - n_val - n_test, n_val, n_test


def load_digits_features(
    seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.2
) -> FeatureSplits:
    """1797 digits, 64 pixels scaled to [0, 1], 10 classes, seeded stratified split.

    No pretrained model is involved: this is the fast real-data smoke test of the pipeline.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.as_tensor(bunch.data, dtype=torch.float32) / 16.0
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    sizes = _fraction_sizes(len(y), val_fraction, test_fraction)
    train, val, test = stratified_partition(y, sizes, seed)
    return FeatureSplits(
        train=(x[train], y[train]),
        val=(x[val], y[val]),
        test=(x[test], y[test]),
        classes=[str(c) for c in bunch.target_names],
        name="digits",
    )
