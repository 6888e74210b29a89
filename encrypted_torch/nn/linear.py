"""Linear: y = x Wᵀ + b on encrypted inputs, with HETAL's packing of [W | b] (HETAL.md §2)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import ShapeError
from ..tensor.enctensor import EncTensor, encrypt
from ..tensor.layout import BlockLayout
from .module import Module
from .parameter import Parameter


class Linear(Module):
    """A fully connected layer whose weights are encrypted.

    Built in plaintext with torch's initialisation (or zeros, HETAL's convex default), then
    ``encrypt(ctx, unit=...)`` packs [W | b] (out × in+1) in the vertical tiling that DiagABT
    reads and DiagATB writes, so gradients add to it with no repacking. ``.weight`` and ``.bias``
    are views the key owner can decrypt; the optimizer sees the one packed parameter
    ``weight_bias``.

    >>> model = Linear(64, 10).encrypt(ctx, unit=train.unit)       # doctest: +SKIP
    >>> logits = model(x_enc)                                      # doctest: +SKIP
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 init: str = "torch", generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features, self.use_bias = in_features, out_features, bias
        if init == "zeros":
            w, b = torch.zeros(out_features, in_features), torch.zeros(out_features)
        elif init == "torch":
            ref = torch.nn.Linear(in_features, out_features, bias=bias)
            if generator is not None:
                bound = 1 / np.sqrt(in_features)
                ref.weight.data.uniform_(-bound, bound, generator=generator)
                if bias:
                    ref.bias.data.uniform_(-bound, bound, generator=generator)
            w = ref.weight.detach().clone()
            b = ref.bias.detach().clone() if bias else torch.zeros(out_features)
        else:
            raise ValueError(f"init must be 'torch' or 'zeros', got {init!r}")
        self.plain_weight: torch.Tensor | None = w.double()
        self.plain_bias: torch.Tensor | None = b.double()

    def packed_plain(self) -> torch.Tensor:
        """[W | b] in plaintext (before encryption)."""
        if self.plain_weight is None or self.plain_bias is None:
            raise ShapeError("this Linear is encrypted; its plaintext weights were dropped")
        if not self.use_bias:
            return self.plain_weight
        return torch.cat([self.plain_weight, self.plain_bias[:, None]], dim=1)

    def encrypt(self, ctx: Any, *, unit: tuple[int, int]) -> Linear:
        """Encrypt [W | b] with the public key in the vertical tiling of ``unit`` (the data's)."""
        ctx = self._check_public(ctx)
        packed = self.packed_plain()
        layout = BlockLayout(tuple(packed.shape), tuple(unit), "vertical")
        self.weight_bias = Parameter(encrypt(packed, ctx, layout=layout))
        self.plain_weight = self.plain_bias = None  # the server must not keep them
        return self

    @property
    def weight(self) -> ParameterView:
        return ParameterView(self, "weight")

    @property
    def bias(self) -> ParameterView | None:
        return ParameterView(self, "bias") if self.use_bias else None

    def forward(self, x: EncTensor) -> EncTensor:
        """Logits x Wᵀ + b, horizontally tiled (batch × out_features); DiagABT, 3-4 levels."""
        if not self.is_encrypted:
            raise ShapeError("call .encrypt(ctx, unit=...) before the forward pass")
        if x.shape[1] != self.in_features:
            raise ShapeError(f"Linear({self.in_features}, {self.out_features}) got input of shape "
                             f"{tuple(x.shape)}")
        xb = with_bias_column(x) if self.use_bias else x
        return xb @ self.weight_bias.T

    def to_torch(self, secret_ctx: Any) -> torch.nn.Linear:
        """Decrypt into a plaintext torch.nn.Linear (client side, for local inference)."""
        packed = secret_ctx.decrypt(self.weight_bias).float()
        out = torch.nn.Linear(self.in_features, self.out_features, bias=self.use_bias)
        with torch.no_grad():
            out.weight.copy_(packed[:, : self.in_features])
            if self.use_bias:
                out.bias.copy_(packed[:, self.in_features])
        return out

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.use_bias}"

    def __repr__(self) -> str:
        return f"Linear({self.extra_repr()}, encrypted={self.is_encrypted})"


class ParameterView:
    """``Linear.weight`` / ``.bias``: a part of the packed parameter, decryptable by the key owner."""

    def __init__(self, module: Linear, part: str) -> None:
        self.module, self.part = module, part

    @property
    def shape(self) -> torch.Size:
        m = self.module
        return torch.Size((m.out_features, m.in_features) if self.part == "weight" else (m.out_features,))

    def _decrypt_with(self, secret: Any) -> torch.Tensor:
        packed = secret.decrypt(self.module.weight_bias)
        n = self.module.in_features
        return packed[:, :n] if self.part == "weight" else packed[:, n]

    def __repr__(self) -> str:
        return f"<encrypted {self.part} of shape {tuple(self.shape)}>"


def with_bias_column(x: EncTensor) -> EncTensor:
    """Append a column of ones (X̄ = [X | 1]) to valid rows: a free plaintext add into padding.

    When the features fill their last block column exactly, the ones need a new block column,
    encrypted with the public key (they are public).
    """
    rows, cols = x.shape
    layout = x.layout.with_shape((rows, cols + 1))
    ones = np.zeros((rows, cols + 1))
    ones[:, cols] = 1.0
    packed = layout.pack(ones)
    ev = x.ctx.evaluator
    n_b_old = x.layout.grid[1]
    blocks = []
    for i, row in enumerate(x.blocks):
        new_row = [ev.add_plain(c, packed[i, j]) for j, c in enumerate(row)]
        if layout.grid[1] > n_b_old:
            level = min(c.level for c in row)
            new_row.append(ev.encrypt(packed[i, n_b_old], level=level))
        blocks.append(new_row)
    out = EncTensor(blocks, layout, x.ctx)
    return out
