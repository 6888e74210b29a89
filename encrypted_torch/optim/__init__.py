"""Optimizers over encrypted parameters (torch.optim's names)."""

from . import functional
from .optimizer import EncOptimizer
from .sgd import NAG, SGD

__all__ = ["NAG", "SGD", "EncOptimizer", "functional"]
