"""Approximations as data with a contract: coefficients, domain, max error, depth and source."""

from .comparison import F3, G3, Comparison
from .exp import P8, Exp
from .extension import DomainExtension
from .inverse import GoldschmidtInverse
from .polynomial import Polynomial
from .softmax import SoftmaxConfig

__all__ = ["F3", "G3", "P8", "Comparison", "DomainExtension", "Exp", "GoldschmidtInverse", "Polynomial",
           "SoftmaxConfig"]
