"""Linear: y = x Wᵀ + b on encrypted inputs, with HETAL's packing of [W | b] (HETAL.md §2)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import EncryptionRequiredError, ShapeError
from ..linalg.diag_abt import levels_needed
from ..tensor.enctensor import EncTensor, encrypt
from ..tensor.layout import BlockLayout
from .module import Module, resolve_unit
from .parameter import Parameter


def _weight_parameter(packed: EncTensor) -> Parameter:
    """[W | b] as the Parameter the forward's DiagABT reads as B: with an active Refresher it packs
    B with ×i (option a) and uses it at ``levels_needed("const")[1]`` levels when its result may sit
    at level 0 (HETAL.md §2)."""
    param = Parameter(packed)
    param.use_levels = levels_needed("const")[1]
    return param


class Linear(Module):
    """A fully connected layer whose weights are encrypted.

    Built in plaintext with torch's initialisation (or zeros, HETAL's convex default; or
    ``load_state_dict`` of a ``torch.nn.Linear``'s), then ``encrypt(ctx, like=train)`` packs
    [W | b] (out × in+1) in the vertical tiling that DiagABT reads and DiagATB writes, in the
    training data's block shape, so gradients add to it with no repacking.

    Names: the encrypted ``state_dict()`` (and the optimizer) hold the one packed parameter
    ``weight_bias`` (checkpoints and the client/server protocol use it); ``.weight`` and ``.bias``
    are views the key owner can decrypt; ``decrypted_state_dict(owner)`` and
    ``to_torch(owner).state_dict()`` give torch's ``weight`` and ``bias`` in float64.

    >>> model = Linear(64, 10).encrypt(owner, like=train)          # doctest: +SKIP
    >>> logits = model(x_enc)                                      # doctest: +SKIP
    >>> torch_model = model.to_torch(owner)                        # doctest: +SKIP
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

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Encrypted: the encrypted ``state_dict()`` of a Linear like this one. Not yet encrypted:
        a torch.nn.Linear's (``weight``, ``bias``), e.g. to start from trained weights."""
        if self.is_encrypted:
            return super().load_state_dict(state)
        expected = {"weight", "bias"} if self.use_bias else {"weight"}
        if set(state) != expected:
            raise ShapeError(f"a plaintext Linear loads {sorted(expected)}, got {sorted(state)}")
        w = torch.as_tensor(state["weight"], dtype=torch.float64)
        if tuple(w.shape) != (self.out_features, self.in_features):
            raise ShapeError(f"weight of shape {tuple(w.shape)} for Linear({self.in_features}, {self.out_features})")
        self.plain_weight = w.clone()
        if self.use_bias:
            b = torch.as_tensor(state["bias"], dtype=torch.float64)
            if tuple(b.shape) != (self.out_features,):
                raise ShapeError(f"bias of shape {tuple(b.shape)} for Linear({self.in_features}, {self.out_features})")
            self.plain_bias = b.clone()
        return None

    def encrypt(self, ctx: Any, unit: tuple[int, int] | None = None, *, like: Any = None) -> Linear:
        """Encrypt [W | b] with the public key in the vertical tiling of the data's block shape
        (``like``: the encrypted training data; or ``unit`` itself)."""
        ctx = self._check_public(ctx)
        unit = resolve_unit(unit, like)
        packed = self.packed_plain()
        layout = BlockLayout(tuple(packed.shape), tuple(unit), "vertical")
        self.weight_bias = _weight_parameter(encrypt(packed, ctx, layout=layout))
        self.plain_weight = self.plain_bias = None  # the server must not keep them
        return self

    @classmethod
    def from_state_dict(cls, state: dict[str, EncTensor], in_features: int, bias: bool = True) -> Linear:
        """The encrypted Linear whose ``state_dict()`` is ``state`` (e.g. a model fetched from the server),
        so that ``Linear.from_state_dict(state, d).to_torch(owner)`` decrypts it like any other."""
        packed = state.get("weight_bias")
        if not isinstance(packed, EncTensor):
            raise EncryptionRequiredError("from_state_dict takes an encrypted state_dict ({'weight_bias': EncTensor})")
        model = cls(in_features, packed.shape[0], bias=bias, init="zeros")
        model.weight_bias = _weight_parameter(packed)
        model.plain_weight = model.plain_bias = None
        return model

    @property
    def weight(self) -> ParameterView:
        return ParameterView(self, "weight")

    @property
    def bias(self) -> ParameterView | None:
        return ParameterView(self, "bias") if self.use_bias else None

    def forward(self, x: EncTensor) -> EncTensor:
        """Logits x Wᵀ + b, horizontally tiled (batch × out_features); DiagABT, 3-4 levels."""
        if not isinstance(x, EncTensor):
            raise EncryptionRequiredError(
                f"Linear got a plaintext {type(x).__name__}; it computes on encrypted inputs: encrypt "
                "them (key_owner.encrypt_dataset(...)), or run plaintext inputs through the decrypted "
                "model, model.to_torch(key_owner)(x)")
        if not self.is_encrypted:
            raise ShapeError("call .encrypt(ctx, like=train) before the forward pass")
        if tuple(x.layout.unit) != tuple(self.weight_bias.layout.unit):
            raise ShapeError(f"the model was encrypted for {self.weight_bias.layout.unit} blocks, the input has "
                             f"{x.layout.unit} blocks; encrypt the model with like=<this data>, and all "
                             "data sets with the same key owner (it keeps one block shape)")
        if x.shape[1] != self.in_features:
            raise ShapeError(f"Linear({self.in_features}, {self.out_features}) got input of shape "
                             f"{tuple(x.shape)}")
        xb = with_bias_column(x) if self.use_bias else x
        return xb @ self.weight_bias.T

    def to_torch(self, secret_ctx: Any) -> torch.nn.Linear:
        """Decrypt into a float64 torch.nn.Linear (client side), so that
        ``model.to_torch(owner)(owner.decrypt(x))`` runs as is (decrypt gives float64 too)."""
        if not self.is_encrypted:
            raise ShapeError("this Linear is not encrypted yet; there is nothing to decrypt")
        packed = secret_ctx.decrypt(self.weight_bias)
        out = torch.nn.Linear(self.in_features, self.out_features, bias=self.use_bias, dtype=torch.float64)
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
