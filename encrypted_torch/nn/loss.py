"""CrossEntropyLoss: the fused approximate softmax + cross-entropy of encrypted_torch.functional."""

from __future__ import annotations

from typing import Any

from ..functional import cross_entropy
from ..functional.key_owner_softmax import key_owner_cross_entropy
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


class KeyOwnerCrossEntropyLoss(Module):
    """Mean cross-entropy with the exact softmax, evaluated by the key owner (opt-in protocol).

    ``criterion(logits, batch.kept_labels).backward()`` sets the logits' grad to a fresh encryption
    of (softmax(logits) − Y)/b made by the key owner from the labels it kept: one round trip per
    step instead of HETAL's approximate softmax (its levels, refreshes and error). Training sets
    are encrypted with ``keep_labels=True``; the Trainer passes the batches' ``kept_labels``.
    Needs an interactive key owner: HETAL's ``CrossEntropyLoss`` is the non-interactive path.
    """

    labels_stay_with_key_owner = True

    def forward(self, logits: EncTensor, labels: Any) -> Any:
        return key_owner_cross_entropy(logits, labels)
