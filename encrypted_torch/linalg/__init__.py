"""HETAL's encrypted matrix products (HETAL.md §3): DiagABT for ``x @ w.T``, DiagATB for ``g.T @ x``.

>>> logits = x @ w.T            # DiagABT: grid × vertical → horizontal     # doctest: +SKIP
>>> grad_w = g.T @ x            # DiagATB: horizontal × grid → vertical     # doctest: +SKIP
"""

from . import counts
from .diag_abt import diag_abt, diag_abt_plain
from .diag_atb import choose_variant, diag_atb, diag_atb_plain
from .functions import MatMulABT, MatMulATB, matmul
from .steps import diag_abt_steps, diag_atb_steps, hetal_rotation_steps, softmax_steps
from .transpose import Transposed

__all__ = [
    "MatMulABT", "MatMulATB", "Transposed", "choose_variant", "counts", "diag_abt", "diag_abt_plain",
    "diag_abt_steps", "diag_atb", "diag_atb_plain", "diag_atb_steps", "hetal_rotation_steps", "matmul",
    "softmax_steps",
]
