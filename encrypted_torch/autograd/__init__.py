"""Autograd for encrypted tensors."""

from .function import Function, FunctionCtx, backward, is_grad_enabled, no_grad

__all__ = ["Function", "FunctionCtx", "backward", "is_grad_enabled", "no_grad"]
