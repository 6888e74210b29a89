"""SGD with torch.optim.SGD's update rule, and NAG (HETAL's Nesterov lineage), on encrypted params."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..autograd.function import no_grad
from ..profiling import section
from . import functional as F
from .optimizer import EncOptimizer


class SGD(EncOptimizer):
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

    def step(self) -> None:
        with no_grad(), section("optimizer"):
            for g in self.param_groups:
                for p in g["params"]:
                    if p.grad is None:
                        continue
                    state = self.state.setdefault(p, {})
                    new_p, buf = F.sgd(p.detach(), p.grad, state.get("momentum_buffer"), lr=g["lr"],
                                       momentum=g["momentum"], dampening=g["dampening"],
                                       nesterov=g["nesterov"], weight_decay=g["weight_decay"])
                    if buf is not None:
                        state["momentum_buffer"] = buf
                    p.set_(new_p)


class NAG(EncOptimizer):
    """Nesterov's accelerated gradient as in HETAL's lineage (Kim et al. 2018; HETAL.md §5).

    v_{t+1} = w_t − η∇L(w_t);  w_{t+1} = (1−γ_t)·v_{t+1} + γ_t·v_t, with public γ_t
    (``functional.nag_gammas``). The state v is encrypted.
    """

    def __init__(self, params: Iterable[Any], lr: float) -> None:
        if lr <= 0:
            raise ValueError(f"invalid learning rate {lr}")
        super().__init__(params, dict(lr=lr))

    def step(self) -> None:
        with no_grad(), section("optimizer"):
            for g in self.param_groups:
                for p in g["params"]:
                    if p.grad is None:
                        continue
                    state = self.state.setdefault(p, {"step": 0})
                    state["step"] += 1
                    gamma = F.nag_gammas(state["step"])[-1]
                    new_p, v = F.nag(p.detach(), p.grad, state.get("v"), lr=g["lr"], gamma=gamma)
                    state["v"] = v
                    p.set_(new_p)
