"""Early stopping on the validation loss (HETAL: patience 3); the key owner runs it."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class EarlyStopping:
    """Stop after ``patience`` epochs without the monitored loss improving by more than ``min_delta``."""

    patience: int = 3
    min_delta: float = 0.0
    best: float = math.inf
    best_epoch: int = -1
    bad_epochs: int = 0

    def update(self, epoch: int, loss: float) -> tuple[bool, bool]:
        """Record an epoch's loss; returns (improved, stop)."""
        if not math.isfinite(loss):
            self.bad_epochs += 1
            return False, self.bad_epochs >= self.patience
        improved = loss < self.best - self.min_delta
        if improved:
            self.best, self.best_epoch, self.bad_epochs = loss, epoch, 0
        else:
            self.bad_epochs += 1
        return improved, self.bad_epochs >= self.patience

    def state_dict(self) -> dict:
        return dict(self.__dict__)

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)
