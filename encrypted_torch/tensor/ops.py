"""Elementwise ops and sums as autograd Functions: forward next to backward, with their depth."""

from __future__ import annotations

from typing import Any

from ..autograd.function import Function, FunctionCtx
from ..errors import ShapeError
from . import kernels
from .base import TensorBase


def _is_enc(x: Any) -> bool:
    return isinstance(x, TensorBase)


def _check_same_layout(a: Any, b: Any, op: str) -> None:
    if a.layout != b.layout:
        raise ShapeError(f"{op}: layouts differ: {a.shape} {a.layout.describe()} vs "
                         f"{b.shape} {b.layout.describe()}")
    if a.ctx.fingerprint != b.ctx.fingerprint:
        from ..errors import ContextMismatchError

        raise ContextMismatchError(f"{op}: operands were encrypted under different keys")


class Add(Function):
    """a + b; 0 levels (a plaintext or scalar b is encoded at a's scale)."""

    LEVELS = 0

    @staticmethod
    def forward(ctx: FunctionCtx, a: Any, b: Any) -> Any:
        ev = a.ctx.evaluator
        if _is_enc(b):
            _check_same_layout(a, b, "add")
            blocks = kernels.zip_blocks(a._blocks, b._blocks, ev.add)
        else:
            blocks = kernels.add_plain(ev, a._blocks, kernels.plain_blocks(a.layout, b))
        return a._new(blocks)

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Any) -> tuple[Any, Any]:
        return grad, grad


class Sub(Function):
    """a - b; 0 levels."""

    LEVELS = 0

    @staticmethod
    def forward(ctx: FunctionCtx, a: Any, b: Any) -> Any:
        ev = a.ctx.evaluator
        if _is_enc(b):
            _check_same_layout(a, b, "sub")
            blocks = kernels.zip_blocks(a._blocks, b._blocks, ev.sub)
        else:
            blocks = kernels.add_plain(ev, a._blocks, kernels.plain_blocks(a.layout, b), -1.0)
        return a._new(blocks)

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Any) -> tuple[Any, Any]:
        return grad, -grad if ctx.needs_input_grad[1] else None


class Neg(Function):
    """-a; 0 levels."""

    @staticmethod
    def forward(ctx: FunctionCtx, a: Any) -> Any:
        ev = a.ctx.evaluator
        return a._new(kernels.map_blocks(a._blocks, lambda c, i, j: ev.negate(c)))

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Any) -> Any:
        return -grad


class Mul(Function):
    """a * b elementwise: 1 level (ct×ct with relinearization, or ct×pt, or ct×scalar)."""

    LEVELS = 1

    @staticmethod
    def forward(ctx: FunctionCtx, a: Any, b: Any) -> Any:
        ev = a.ctx.evaluator
        ctx.save_for_backward(a, b)
        if _is_enc(b):
            _check_same_layout(a, b, "mul")
            blocks = kernels.zip_blocks(a._blocks, b._blocks, ev.mul)
        elif isinstance(b, (int, float)):
            blocks = kernels.mul_scalar(ev, a._blocks, b)
        else:
            blocks = kernels.mul_plain(ev, a._blocks, kernels.plain_blocks(a.layout, b))
        return a._new(blocks)

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Any) -> tuple[Any, Any]:
        a, b = ctx.saved_tensors
        ga = grad * b if ctx.needs_input_grad[0] else None
        gb = grad * a if ctx.needs_input_grad[1] else None
        return ga, gb


class Sum(Function):
    """Sum over dim 0 or 1 (kept, as keepdim=True): log2(s) rotations and 1 level (a mask)."""

    LEVELS = 1

    @staticmethod
    def forward(ctx: FunctionCtx, a: Any, dim: int) -> Any:
        ctx.save_for_backward(a.layout)
        blocks, layout = kernels.sum_dim(a.ctx.evaluator, a._blocks, a.layout, dim)
        return a._new(blocks, layout)

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Any) -> tuple[Any, None]:
        (in_layout,) = ctx.saved_tensors
        blocks = kernels.expand_dim(grad.ctx.evaluator, grad._blocks, grad.layout, in_layout.shape)
        return grad._new(blocks, in_layout), None
