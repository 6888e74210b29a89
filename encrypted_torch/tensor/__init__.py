"""Encrypted tensors: block layout, kernels, autograd ops."""

from .enctensor import EncTensor, encrypt
from .layout import BlockLayout, unit_shape

__all__ = ["BlockLayout", "EncTensor", "encrypt", "unit_shape"]
