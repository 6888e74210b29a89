"""CrossEntropyLoss: the fused approximate softmax + cross-entropy of encrypted_torch.functional."""

from __future__ import annotations

from typing import Any

from ..functional import cross_entropy
from ..tensor.enctensor import EncTensor
from .module import Module


class CrossEntropyLoss(Module):
    """``loss = criterion(logits, one_hot_targets)``; ``loss.backward()`` seeds (softmax − y)/batch.

    Targets are encrypted one-hot rows in the logits' horizontal layout (the server never sees
    labels). ``reduction``: ``"mean"`` (torch's default) or ``"sum"``. ``softmax_config`` picks the
    softmax approximation (functional.SoftmaxConfig).

    >>> criterion = CrossEntropyLoss(reduction="sum")              # doctest: +SKIP
    >>> criterion(model(x), y).backward()                          # doctest: +SKIP
    """

    def __init__(self, softmax_config: Any = None, *, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum' (encrypted losses are never 'none'), "
                             f"got {reduction!r}")
        self.softmax_config, self.reduction = softmax_config, reduction

    def forward(self, logits: EncTensor, target: EncTensor) -> Any:
        return cross_entropy(logits, target, config=self.softmax_config, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"
