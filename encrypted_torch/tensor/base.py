"""TensorBase: what an EncTensor is made of, for the code below ``EncTensor`` (ops, matrix products).

The ops and the products check ``isinstance(x, TensorBase)`` and build results with ``x._new``:
they need the type, not the class with the ops (which imports them), so that the imports run one
way. torch splits ``Tensor`` from ``torch._C.TensorBase`` the same way.
"""

from __future__ import annotations

from typing import Any

import torch

from ..autograd import function as autograd
from ..ckks.evaluator import Cipher
from ..ckks.public import PublicContext
from ..errors import KeyRoleError, ShapeError
from .layout import BlockLayout

Blocks = list[list[Cipher]]


class TensorBase:
    """Blocks of ciphertexts in a ``BlockLayout`` under a PublicContext, and autograd's fields."""

    def __init__(self, blocks: Blocks, layout: BlockLayout, ctx: PublicContext, requires_grad: bool = False) -> None:
        if not isinstance(ctx, PublicContext):
            raise KeyRoleError(f"an EncTensor holds a PublicContext, not a {type(ctx).__name__}; "
                               "pass secret_ctx.public()")
        if (len(blocks), len(blocks[0]) if blocks else 0) != layout.grid:
            raise ShapeError(f"{len(blocks)} block rows for a layout of grid {layout.grid}")
        self._blocks = blocks
        self.layout = layout
        self.ctx = ctx
        self.requires_grad = requires_grad
        self.grad: Any = None
        self.grad_fn: autograd.Node | None = None

    def _new(self, blocks: Blocks, layout: BlockLayout | None = None) -> Any:
        """A tensor of the same context from ``blocks`` (in ``layout``, default this one's)."""
        raise NotImplementedError

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self.layout.shape)

    def size(self, dim: int | None = None) -> Any:
        return self.shape if dim is None else self.shape[dim]

    @property
    def ndim(self) -> int:
        return 2

    @property
    def blocks(self) -> Blocks:
        return self._blocks

    def ciphers(self) -> list[Cipher]:
        return [c for row in self._blocks for c in row]

    @property
    def level(self) -> int:
        """Levels left: the smallest chain index among the blocks."""
        return min(c.level for c in self.ciphers())

    @property
    def is_leaf(self) -> bool:
        return self.grad_fn is None
