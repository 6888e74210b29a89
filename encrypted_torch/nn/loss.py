"""CrossEntropyLoss: the fused approximate softmax + cross-entropy of encrypted_torch.functional."""

from __future__ import annotations

from typing import Any

from ..tensor.enctensor import EncTensor


class CrossEntropyLoss:
    """``loss = criterion(logits, one_hot_targets)``; ``loss.backward()`` seeds (softmax − y)/batch.

    Targets are encrypted one-hot rows in the logits' horizontal layout (the server never sees
    labels). ``softmax_config`` picks the softmax approximation (functional.SoftmaxConfig).
    """

    def __init__(self, softmax_config: Any = None) -> None:
        self.softmax_config = softmax_config

    def __call__(self, logits: EncTensor, target: EncTensor) -> Any:
        from ..functional import cross_entropy

        if self.softmax_config is None:
            return cross_entropy(logits, target)
        return cross_entropy(logits, target, config=self.softmax_config)
