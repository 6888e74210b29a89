"""The matrix products as autograd Functions, ``t.T`` and the dispatch behind ``EncTensor.__matmul__``.

The homomorphic kernels live in encrypted_torch.linalg (no autograd there); the ops here record
them, like the elementwise ops in ops.py record kernels.py.

For y = x @ w.T (a linear layer): grad_w = gᵀ·x is DiagATB, whose vertical result is w's own
layout, so the optimizer adds it with no repacking. HETAL never needs grad_x (the features are
constants), so that rule is left out and says so.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..autograd.function import Function, FunctionCtx
from ..errors import ShapeError
from ..linalg.diag_abt import DEPTH as ABT_DEPTH
from ..linalg.diag_abt import diag_abt, diag_abt_plain
from ..linalg.diag_atb import DEPTH as ATB_DEPTH
from ..linalg.diag_atb import diag_atb, diag_atb_plain
from ..refresh import level_policy
from .base import TensorBase


def product_out_level() -> int | None:
    """Where a product's result lands: level 0 when a Refresher is active, else as high as possible.

    The products' rotations run on operands brought down to ``out + need``, and a rotation at level 1
    costs about a sixth of one at level 5 (benchmarks/results/train_step.md), so with a Refresher it
    is cheaper to compute low and let the consumer refresh the few outputs (n_a logit blocks, n_b
    gradient blocks) than to keep levels through thousands of rotations.
    """
    return level_policy().product_out_level


def _plain(m: Any) -> np.ndarray:
    if isinstance(m, torch.Tensor):
        return m.detach().to(torch.float64).cpu().numpy()
    return np.asarray(m, dtype=np.float64)


class MatMulABT(Function):
    """y = out_scale · x @ w.T by DiagABT: x grid, w vertical (or a plaintext c × f matrix); result
    horizontal. 3 levels on x, 3-4 on w (``diag_abt.levels_needed``)."""

    LEVELS = ABT_DEPTH
    SECTION = "matmul"

    @staticmethod
    def forward(ctx: FunctionCtx, x: Any, w: Any, out_scale: float = 1.0) -> Any:
        ctx.save_for_backward(x, w, out_scale)
        out = product_out_level()
        if isinstance(w, TensorBase):
            return diag_abt(x, w, out_scale=out_scale, out_level=out)
        return diag_abt_plain(x, w, out_scale=out_scale, out_level=out)

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Any) -> tuple[Any, Any, None]:
        x, w, out_scale = ctx.saved_tensors
        if ctx.needs_input_grad[0]:
            raise NotImplementedError(
                "the gradient of x in x @ w.T (grad @ w) is not implemented: HETAL's features are "
                "constants. Encrypt x with requires_grad=False.")
        grad_w = (diag_atb(grad, x, out_scale=out_scale, out_level=product_out_level())
                  if ctx.needs_input_grad[1] else None)
        return None, grad_w, None


class MatMulATB(Function):
    """c = out_scale · g.T @ x by DiagATB: g horizontal, x grid (or a plaintext batch × f matrix);
    result vertical (the weights' layout). 3-4 levels on g, 2-3 on x (``diag_atb.levels_needed``)."""

    LEVELS = max(max(d) for d in ATB_DEPTH.values())
    SECTION = "matmul"

    @staticmethod
    def forward(ctx: FunctionCtx, g: Any, x: Any, out_scale: float = 1.0) -> Any:
        ctx.save_for_backward(g, x, out_scale)
        out = product_out_level()
        if isinstance(x, TensorBase):
            return diag_atb(g, x, out_scale=out_scale, out_level=out)
        return diag_atb_plain(g, x, out_scale=out_scale, out_level=out)

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Any) -> tuple[Any, Any, None]:
        g, x, out_scale = ctx.saved_tensors
        if ctx.needs_input_grad[1]:
            raise NotImplementedError(
                "the gradient of x in g.T @ x (g @ grad) is not implemented: HETAL's features are "
                "constants. Encrypt x with requires_grad=False.")
        if not ctx.needs_input_grad[0]:
            return None, None, None
        # d(gᵀx)/dg = x·gradᵀ: DiagABT, whose horizontal result is g's own layout.
        if isinstance(x, TensorBase):
            return diag_abt(x, grad, out_scale=out_scale, out_level=product_out_level()), None, None
        raise NotImplementedError("the gradient of g in g.T @ plaintext needs plaintext @ EncTensor.T")


class Transposed:
    """The transpose of an EncTensor as an operand of ``@``: ``x @ w.T`` and ``g.T @ x``.

    Nothing is re-packed: DiagABT reads ``w`` in its vertical tiling, DiagATB reads ``g`` in its
    horizontal one. ``.T`` gives the EncTensor back.
    """

    __slots__ = ("base",)

    def __init__(self, base: Any) -> None:
        self.base = base

    @property
    def T(self) -> Any:  # noqa: N802 (torch's name)
        return self.base

    @property
    def shape(self) -> torch.Size:
        rows, cols = self.base.shape
        return torch.Size((cols, rows))

    @property
    def requires_grad(self) -> bool:
        return bool(self.base.requires_grad)

    def __matmul__(self, other: Any) -> Any:
        return matmul(self, other)

    def __bool__(self) -> bool:
        return self.base.__bool__()

    def __repr__(self) -> str:
        return f"Transposed({self.base!r})"


def matmul(left: Any, right: Any) -> Any:
    """``left @ right`` for EncTensors and their ``.T`` views, torch-style.

    ``x @ w.T`` (w encrypted, vertical) and ``x @ m`` (m a plaintext features × classes matrix) run
    DiagABT; ``g.T @ x`` (x encrypted or plaintext) runs DiagATB; ``x.T @ g`` returns ``(g.T @ x).T``.
    """
    enc_right = isinstance(right, TensorBase)
    if isinstance(left, Transposed):
        base = left.base
        if base.layout.tiling == "horizontal":
            return MatMulATB.apply(base, right if enc_right else _plain(right))
        if base.layout.tiling == "grid" and enc_right and right.layout.tiling == "horizontal":
            return Transposed(MatMulATB.apply(right, base))
        raise ShapeError(f"{tuple(left.shape)} @ {tuple(right.shape)}: a transposed left operand must be "
                         "a horizontally tiled (batch × classes) EncTensor, as in g.T @ x")
    if isinstance(right, Transposed):
        return MatMulABT.apply(left, right.base)
    if enc_right:
        raise ShapeError(f"{tuple(left.shape)} @ {tuple(right.shape)}: write x @ w.T with w "
                         "(classes × features) encrypted in the vertical tiling")
    m = _plain(right)
    if m.ndim != 2:
        raise ShapeError(f"{tuple(left.shape)} @ a {m.ndim}-D operand: only matrices")
    return MatMulABT.apply(left, m.T)
