"""torch.nn.functional-style names for the encrypted ops."""

from __future__ import annotations

from typing import Any

from ..functional import cross_entropy as _ce
from ..functional import softmax as _softmax
from .linear import with_bias_column


def softmax(logits: Any, dim: int = 1, **kwargs: Any) -> Any:
    """Row-wise approximate softmax of encrypted logits (dim must be 1)."""
    if dim not in (1, -1):
        raise ValueError("encrypted softmax is row-wise: dim=1")
    return _softmax(logits, **kwargs)


def cross_entropy(logits: Any, target: Any, **kwargs: Any) -> Any:
    """Fused approximate softmax + cross-entropy; see functional.cross_entropy."""
    return _ce(logits, target, **kwargs)


def linear(x: Any, weight_bias: Any) -> Any:
    """x̄ W̄ᵀ for a packed [W | b] parameter (DiagABT)."""
    return with_bias_column(x) @ weight_bias.T
