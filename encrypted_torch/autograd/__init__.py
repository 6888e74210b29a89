"""Autograd for encrypted tensors."""

from .function import Function, FunctionCtx, backward, enable_grad, is_grad_enabled, no_grad, set_grad_enabled

__all__ = ["Function", "FunctionCtx", "backward", "enable_grad", "is_grad_enabled", "no_grad", "set_grad_enabled"]
