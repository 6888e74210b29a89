"""Training loop with encrypted early stopping (server side)."""

from .early_stopping import EarlyStopping
from .key_owner_link import EpochVerdict, KeyOwnerLink
from .trainer import FitResult, StepRecord, Trainer, fit
from .unit_choice import choose_unit

__all__ = ["EarlyStopping", "EpochVerdict", "FitResult", "KeyOwnerLink", "StepRecord", "Trainer", "choose_unit",
           "fit"]
