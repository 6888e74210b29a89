"""Softmax cross-entropy fused with the approximate softmax, as an autograd Function.

Fused because the gradient of the mean cross-entropy with respect to the logits is (P − Y)/b: no
log and no softmax Jacobian, which would cost levels that the fused rule does not (STYLE.md §2).
The loss value is never computed on ciphertexts: the key owner computes it in float64 from what it
decrypts (HETAL.md §1: the client owns data and model, and HETAL's early stopping needs only the
validation loss, which the client computes from validation logits).
"""

from __future__ import annotations

from typing import Any

import torch

from ..approx.softmax import SoftmaxConfig
from ..autograd import function as autograd
from ..autograd.function import Function, FunctionCtx
from ..errors import ShapeError
from ..refresh import ensure_levels
from ..tensor.enctensor import EncTensor
from .softmax import _check_layout, check_domain, run_softmax


class CrossEntropyOutput:
    """What ``cross_entropy`` returns: the encrypted probabilities and a handle for backward.

    ``probs`` encrypts ``probs_scale``·P (``probs_scale`` = 1/batch for ``reduction="mean"``: the
    batch mean rides on exp's coefficients at no level, so the gradient needs no extra level).
    ``backward()`` gives the logits' ``.grad`` = (P − Y)/batch (or P − Y for "sum") exactly, as an
    EncTensor in the logits' horizontal layout. ``value(secret_ctx)`` is the loss, computed by the
    key owner after decryption.
    """

    def __init__(self, probs: EncTensor, probs_scale: float, logits: EncTensor, targets: EncTensor,
                 reduction: str) -> None:
        self.probs, self.probs_scale = probs, probs_scale
        self.logits, self.targets, self.reduction = logits, targets, reduction
        self.requires_grad = False
        self.grad_fn: autograd.Node | None = None

    @property
    def shape(self) -> torch.Size:
        return torch.Size([])

    @property
    def level(self) -> int:
        return self.probs.level

    def __repr__(self) -> str:
        grad = f", grad_fn={self.grad_fn}" if self.grad_fn else ""
        return (f"CrossEntropyOutput(batch={self.probs.shape[0]}, classes={self.probs.shape[1]}, "
                f"reduction={self.reduction!r}, probs_scale={self.probs_scale:g}, level={self.level}{grad})")

    def __bool__(self) -> bool:
        raise TypeError("the encrypted loss has no truth value; "
                        "the key owner computes loss.value(secret_ctx)")

    def __float__(self) -> float:
        raise TypeError("the loss is not computed on ciphertexts; the key owner calls loss.value(secret_ctx)")

    def item(self) -> float:
        return self.__float__()

    def backward(self, gradient: float = 1.0, retain_graph: bool | None = None) -> None:
        """Accumulate d(loss)/d(logits) = gradient·(P − Y)/batch into the logits' ``.grad``
        (a second call raises GraphFreedError unless the first passed ``retain_graph=True``)."""
        if self.grad_fn is None:
            raise RuntimeError("the logits do not require grad, so there is nothing to backpropagate to")
        autograd.backward(self, float(gradient), retain_graph=bool(retain_graph))

    def probabilities(self, secret_ctx: Any) -> torch.Tensor:
        """P (batch × classes), decrypted by the key owner."""
        return secret_ctx.decrypt(self.probs) / self.probs_scale

    def value(self, secret_ctx: Any, *, from_probs: bool = False) -> float:
        """The cross-entropy, computed by the key owner in float64 after decryption.

        From the decrypted logits by default (exact log-softmax, HETAL.md §1's design for the
        validation loss); ``from_probs=True`` uses the decrypted approximate P instead.
        """
        y = secret_ctx.decrypt(self.targets)
        if from_probs:
            logp = torch.log(self.probabilities(secret_ctx).clamp_min(1e-300))
        else:
            logp = torch.log_softmax(secret_ctx.decrypt(self.logits), dim=1)
        per_row = -(y * logp).sum(dim=1)
        return float(per_row.mean() if self.reduction == "mean" else per_row.sum())


class SoftmaxCrossEntropy(Function):
    """forward: P·scale by the approximate softmax (``config.depth(c)`` levels); backward:
    (P − Y)·scale, with Y's plaintext factor on Y's own level: no level on P."""

    SECTION = "softmax"

    @staticmethod
    def forward(ctx: FunctionCtx, logits: EncTensor, targets: EncTensor, config: SoftmaxConfig,
                input_scale: float, reduction: str) -> CrossEntropyOutput:
        scale = 1.0 / logits.shape[0] if reduction == "mean" else 1.0
        probs = run_softmax(logits, config, input_scale=input_scale, output_scale=scale)
        ctx.save_for_backward(probs, targets, scale)
        return CrossEntropyOutput(probs, scale, logits, targets, reduction)

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Any) -> tuple[Any, None, None, None, None]:
        probs, targets, scale = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        g = float(grad)
        ev = probs.ctx.evaluator
        ys = ensure_levels([row[0] for row in targets.blocks], 1, "cross_entropy backward (targets)")
        out = []
        for p, y in zip([row[0] for row in probs.blocks], ys, strict=True):
            if g != 1.0:
                p = ensure_levels([p], 1, "cross_entropy backward (scale)")[0]
                p = ev.mul_plain(p, g)
            # Y·scale·g lands on P's scale one level below Y: Y's level is spent, never P's.
            y_scaled = ev.mul_plain(ev.mod_switch(y, min(y.level, p.level + 1)), scale * g, out_scale=p.scale)
            out.append([ev.sub(p, y_scaled)])
        return probs._new(out), None, None, None, None


def cross_entropy(logits: EncTensor, target: EncTensor, *, config: SoftmaxConfig | None = None,
                  input_scale: float = 1.0, reduction: str = "mean") -> CrossEntropyOutput:
    """Fused approximate softmax + cross-entropy of encrypted logits and encrypted one-hot targets.

    Both are horizontally tiled in the same layout (batch × classes). Returns a
    ``CrossEntropyOutput``; ``loss.backward()`` sets ``logits.grad`` = (P − Y)/batch
    (``reduction="mean"``, torch's default) or P − Y (``"sum"``).

    >>> loss = cross_entropy(logits, y_onehot)        # doctest: +SKIP
    >>> loss.backward()                                # doctest: +SKIP
    >>> loss.value(secret_ctx)                         # doctest: +SKIP
    """
    _check_layout(logits, "cross_entropy")
    if not isinstance(target, EncTensor) or target.layout != logits.layout:
        got = target.layout.describe() if isinstance(target, EncTensor) else type(target).__name__
        raise ShapeError(f"cross_entropy needs one-hot targets encrypted in the logits' layout "
                         f"({logits.layout.describe()}, shape {tuple(logits.shape)}); got {got}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    config = config or SoftmaxConfig()
    check_domain(logits, config, input_scale)
    return SoftmaxCrossEntropy.apply(logits, target, config, input_scale, reduction)
