"""Cross-entropy whose softmax the key owner evaluates exactly: the opt-in interactive protocol.

The key owner already decrypts ciphertexts to refresh them, so it can decrypt the logits of a
training batch, compute (softmax(z) − Y)/b in float64 with the labels it kept, and answer with a
fresh encryption of that gradient. Exact instead of approximate, no softmax levels or refreshes
on the server, and the training labels never leave the client. The server learns nothing more
than from a refresh: the answer is a fresh encryption (docs/design.md, "Threat model").
"""

from __future__ import annotations

from typing import Any

import torch

from ..autograd import function as autograd
from ..autograd.function import Function, FunctionCtx
from ..data.dataset import KeptLabels
from ..errors import KeyOwnerRequiredError, ShapeError
from ..linalg.diag_atb import VARIANTS, levels_needed
from ..refresh import current_refresher, ensure_levels
from ..tensor.enctensor import EncTensor
from .softmax import _check_layout


class KeyOwnerLoss:
    """What ``key_owner_cross_entropy`` returns: no encrypted value, only ``backward()``, which sets
    the logits' ``.grad`` to the key owner's (P − Y)/b, and ``value(key_owner)``."""

    def __init__(self, logits: EncTensor, labels: KeptLabels) -> None:
        self.logits, self.labels = logits, labels
        self.requires_grad = False
        self.grad_fn: autograd.Node | None = None

    @property
    def shape(self) -> torch.Size:
        return torch.Size([])

    def __repr__(self) -> str:
        return f"KeyOwnerLoss(batch={self.labels.rows}, dataset={self.labels.dataset!r}, index={self.labels.index})"

    def __float__(self) -> float:
        raise TypeError("the loss is not computed on ciphertexts; the key owner calls loss.value(key_owner)")

    def item(self) -> float:
        return self.__float__()

    def backward(self, gradient: float = 1.0, retain_graph: bool | None = None) -> None:
        """Accumulate gradient·(P − Y)/b into the logits' ``.grad``."""
        if self.grad_fn is None:
            raise RuntimeError("the logits do not require grad, so there is nothing to backpropagate to")
        autograd.backward(self, float(gradient), retain_graph=bool(retain_graph))

    def value(self, key_owner: Any) -> float:
        """The mean cross-entropy, computed by the key owner in float64 from the decrypted logits."""
        labels = key_owner.kept_labels(self.labels)
        return float(torch.nn.functional.cross_entropy(key_owner.decrypt(self.logits), labels))


class KeyOwnerSoftmaxCrossEntropy(Function):
    """forward: ask the key owner for (P − Y)/b now (one round trip); backward: hand it to the logits."""

    SECTION = "softmax"

    @staticmethod
    def forward(ctx: FunctionCtx, logits: EncTensor, labels: KeptLabels, ask: Any) -> KeyOwnerLoss:
        grad = ask(logits, labels, level=gradient_level(logits))
        if not isinstance(grad, EncTensor) or grad.layout != logits.layout:
            raise ShapeError("the key owner's softmax gradient does not have the logits' layout")
        ctx.save_for_backward(grad)
        return KeyOwnerLoss(logits, labels)

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Any) -> tuple[Any, None, None]:
        (g_logits,) = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        g = float(grad)
        if g == 1.0:
            return g_logits, None, None
        ev = g_logits.ctx.evaluator
        flat = ensure_levels(g_logits.ciphers(), 1, "key-owner softmax backward (scale)")
        n_b = g_logits.layout.grid[1]
        scaled = [ev.mul_plain(c, g) for c in flat]
        return g_logits._new([scaled[i : i + n_b] for i in range(0, len(scaled), n_b)]), None, None


def gradient_level(logits: EncTensor) -> int:
    """The level the gradient is asked at: what its one consumer, DiagATB's A operand, uses (either
    variant), so that the key owner encrypts and sends no level that would be switched away."""
    c_pad = logits.layout.c_pad
    return min(logits.ctx.top_level, max(levels_needed(v, c_pad)[0] for v in VARIANTS))


def key_owner_cross_entropy(logits: EncTensor, labels: KeptLabels) -> KeyOwnerLoss:
    """Mean cross-entropy of encrypted logits against labels the key owner kept, with the exact
    softmax evaluated by the key owner (the active refresher must offer ``softmax_gradient``).

    >>> loss = key_owner_cross_entropy(model(x), batch.kept_labels)   # doctest: +SKIP
    >>> loss.backward()                                                # doctest: +SKIP
    """
    _check_layout(logits, "key_owner_cross_entropy")
    if not isinstance(labels, KeptLabels):
        raise ShapeError(f"the exact-softmax loss takes the batch's KeptLabels (labels the key owner kept), "
                         f"got {type(labels).__name__}; encrypt the training set with keep_labels=True")
    if labels.rows != logits.shape[0]:
        raise ShapeError(f"{logits.shape[0]} logit rows for a batch of {labels.rows}")
    ask = getattr(current_refresher(), "softmax_gradient", None)
    if ask is None:
        raise KeyOwnerRequiredError("the exact softmax is evaluated by the key owner: run the step inside "
                                    "refresh_with(key_owner) (the Trainer does), with a client.KeyOwner or a "
                                    "connected client as the key owner")
    return KeyOwnerSoftmaxCrossEntropy.apply(logits, labels, ask)
