"""The CKKS backend: the only package that talks to tenseal/SEAL."""

from .counters import OpCounts, count_ops
from .evaluator import Cipher, Evaluator
from .params import PRESETS, CKKSParams, get_params
from .public import PublicContext

__all__ = ["PRESETS", "CKKSParams", "Cipher", "Evaluator", "OpCounts", "PublicContext",
           "count_ops", "get_params"]
