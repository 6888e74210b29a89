"""Optimizers over encrypted parameters (torch.optim's names); torch's lr_scheduler drives them."""

from . import functional
from .factory import NAMES, from_name
from .optimizer import EncOptimizer, Optimizer
from .sgd import NAG, SGD

__all__ = ["NAG", "NAMES", "SGD", "EncOptimizer", "Optimizer", "from_name", "functional"]
