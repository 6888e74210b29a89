"""Settings for a client's own data without ML expertise: HETAL's choices (HETAL.md §5) scaled to the data.

HETAL trains 6–52 steps per epoch at batch 512–2048, lr 0.3–2.0, patience 3, with 70/10/20 splits.
``suggest`` keeps those proportions for any data size and says why for every value; ``explain``
prints them next to what the command line overrode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..ckks.params import PRESETS
from ..tensor.layout import next_pow2

STEPS_PER_EPOCH = 6  # HETAL's small sets: Face Mask 2,849 / 512, DermaMNIST 7,007 / 1,024
TOTAL_STEPS = 120  # Face Mask ran 132 steps at most; the epoch count is a cap, early stopping ends sooner
MIN_BATCH, MAX_BATCH = 64, 1024


@dataclass(frozen=True)
class Suggestion:
    """A default and the reason for it."""

    value: Any
    why: str


def preset_for(num_classes: int) -> str:
    """The smallest fast preset whose slots hold a step of ``num_classes`` classes: 'fast', else 'deep'."""
    for name in ("fast", "deep"):
        if next_pow2(num_classes) ** 2 <= PRESETS[name].slots:
            return name
    return "deep"


def suggest(num_samples: int, num_classes: int, val_fraction: float = 0.1,
            test_fraction: float = 0.2) -> dict[str, Suggestion]:
    """Batch size, lr, epochs, patience and preset for ``num_samples`` samples of ``num_classes`` classes."""
    n_train = max(1, round(num_samples * (1 - val_fraction - test_fraction)))
    target = max(1, n_train // STEPS_PER_EPOCH)
    batch = min(MAX_BATCH, max(MIN_BATCH, 1 << (target.bit_length() - 1)))
    steps = math.ceil(n_train / batch)
    epochs = min(25, max(5, math.ceil(TOTAL_STEPS / steps)))
    preset = preset_for(num_classes)
    return {
        "batch_size": Suggestion(batch, f"{n_train} training samples / ~{STEPS_PER_EPOCH} steps per epoch, a power "
                                        f"of two in [{MIN_BATCH}, {MAX_BATCH}] (HETAL: 512–2048)"),
        "lr": Suggestion(1.0, "HETAL's CIFAR-10 / SNIPS value; unit-norm rows move a logit by at most 2·lr a step"),
        "epochs": Suggestion(epochs, f"at most; ~{TOTAL_STEPS} steps in all at {steps} per epoch, between 5 and 25"),
        "patience": Suggestion(3, "HETAL's early stopping on the validation loss"),
        "preset": Suggestion(preset, f"{num_classes} classes: the smallest CKKS preset whose slots hold a step"),
        "val_fraction": Suggestion(val_fraction, "HETAL's 70/10/20 train / validation / test split"),
        "test_fraction": Suggestion(test_fraction, "HETAL's 70/10/20 train / validation / test split"),
        "seed": Suggestion(0, "split and shuffle seed, recorded in the report"),
    }


def explain(chosen: dict[str, Any], suggested: dict[str, Suggestion], overridden: set[str]) -> str:
    """One line per setting: its value and where it came from (a default and why, or the command line)."""
    width = max(len(k) for k in chosen)
    lines = []
    for key, value in chosen.items():
        if key in overridden:
            source = f"--{key.replace('_', '-')}"
        elif key in suggested:
            source = f"default: {suggested[key].why}"
        else:
            source = "default"
        lines.append(f"  {key:<{width}}  {value!s:<8}  ({source})")
    return "\n".join(lines)
