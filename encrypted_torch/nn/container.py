"""Sequential: layers applied in order, encrypted and decrypted together."""

from __future__ import annotations

from typing import Any

import torch

from .module import Module


class Sequential(Module):
    """``nn.Sequential(layer, ...)`` as in torch: ``model(x)`` runs the layers in order.

    Each layer must accept the previous one's encrypted output (``Linear`` takes grid-tiled data
    and gives horizontally tiled logits, so one Linear ends a chain).

    >>> model = nn.Sequential(nn.Linear(64, 10)).encrypt(owner, like=train)   # doctest: +SKIP
    """

    def __init__(self, *layers: Module) -> None:
        super().__init__()
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential takes encrypted_torch.nn modules, got {type(layer).__name__} "
                                f"at position {i}")
            setattr(self, str(i), layer)

    def __len__(self) -> int:
        return len(self._modules)

    def __getitem__(self, i: int) -> Module:
        return list(self._modules.values())[i]

    def forward(self, x: Any) -> Any:
        for layer in self._modules.values():
            x = layer(x)
        return x

    def to_torch(self, secret_ctx: Any) -> torch.nn.Sequential:
        return torch.nn.Sequential(*(m.to_torch(secret_ctx) for m in self._modules.values()))
