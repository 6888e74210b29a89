"""Encrypted layers (torch.nn's names)."""

from . import functional
from .container import Sequential
from .linear import Linear, with_bias_column
from .loss import CrossEntropyLoss, KeyOwnerCrossEntropyLoss
from .module import Module
from .parameter import Parameter

__all__ = ["CrossEntropyLoss", "KeyOwnerCrossEntropyLoss", "Linear", "Module", "Parameter", "Sequential",
           "functional", "with_bias_column"]
