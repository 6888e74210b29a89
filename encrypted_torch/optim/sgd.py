"""SGD with torch.optim.SGD's update rule, and NAG (HETAL's Nesterov lineage), on encrypted params."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..nn.parameter import Parameter
from ..tensor.enctensor import EncTensor
from . import functional as F
from .optimizer import Optimizer


class SGD(Optimizer):
    """``SGD(params, lr, momentum=0, dampening=0, weight_decay=0, nesterov=False)``, exactly torch's rule.

    Momentum buffers are encrypted. Levels: one per scalar multiplication (lr, momentum,
    weight decay); buffers out of levels are refreshed through the active Refresher.
    """

    def __init__(self, params: Iterable[Any], lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False) -> None:
        if lr <= 0:
            raise ValueError(f"invalid learning rate {lr}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

    def _update(self, group: dict[str, Any], param: Parameter, state: dict[str, Any]) -> EncTensor:
        new_p, buf = F.sgd(param.detach(), param.grad, state.get("momentum_buffer"), lr=group["lr"],
                           momentum=group["momentum"], dampening=group["dampening"],
                           nesterov=group["nesterov"], weight_decay=group["weight_decay"],
                           keep_level=param.use_levels)
        if buf is not None:
            state["momentum_buffer"] = buf
        return new_p


class NAG(Optimizer):
    """Nesterov's accelerated gradient as in HETAL's lineage (Kim et al. 2018; HETAL.md §5).

    v_{t+1} = w_t − η∇L(w_t);  w_{t+1} = (1−γ_t)·v_{t+1} + γ_t·v_t, with public γ_t
    (``functional.nag_gammas``). The state v is encrypted.
    """

    def __init__(self, params: Iterable[Any], lr: float) -> None:
        if lr <= 0:
            raise ValueError(f"invalid learning rate {lr}")
        super().__init__(params, dict(lr=lr))

    def _update(self, group: dict[str, Any], param: Parameter, state: dict[str, Any]) -> EncTensor:
        state["step"] = state.get("step", 0) + 1
        gamma = F.nag_gammas(state["step"])[-1]
        new_p, state["v"] = F.nag(param.detach(), param.grad, state.get("v"), lr=group["lr"], gamma=gamma)
        return new_p
