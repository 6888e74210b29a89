"""HETAL's encrypted matrix products (HETAL.md §3): DiagABT for ``x @ w.T``, DiagATB for ``g.T @ x``.

The kernels (``*_blocks``) return blocks and a layout; ``diag_abt`` & co. wrap them in an EncTensor
without recording autograd. ``x @ w.T``'s autograd ops, ``t.T`` and ``matmul`` live with the other
tensor ops in encrypted_torch.tensor.matmul.

>>> logits = x @ w.T            # DiagABT: grid × vertical → horizontal     # doctest: +SKIP
>>> grad_w = g.T @ x            # DiagATB: horizontal × grid → vertical     # doctest: +SKIP
"""

from typing import Any

from . import counts
from .diag_abt import diag_abt, diag_abt_plain
from .diag_atb import choose_variant, diag_atb, diag_atb_plain
from .steps import diag_abt_steps, diag_atb_steps, hetal_rotation_steps, softmax_steps

__all__ = [
    "choose_variant", "counts", "diag_abt", "diag_abt_plain",
    "diag_abt_steps", "diag_atb", "diag_atb_plain", "diag_atb_steps", "hetal_rotation_steps",
    "softmax_steps",
]


def __getattr__(name: str) -> Any:
    # MatMulABT, MatMulATB, Transposed and matmul moved to encrypted_torch.tensor.matmul; they are
    # resolved on first use because tensor/matmul.py imports this package's kernels (while it loads,
    # this package is only partly initialized).
    if name in ("MatMulABT", "MatMulATB", "Transposed", "matmul"):
        from ..tensor import matmul as products

        return getattr(products, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
