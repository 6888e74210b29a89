"""The optimizer named by a job or a HETAL config: one factory for in-process and remote runs."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .optimizer import Optimizer
from .sgd import NAG, SGD

NAMES = ("nesterov", "nag", "sgd")


def from_name(name: str, params: Iterable[Any], *, lr: float, momentum: float = 0.9) -> Optimizer:
    """``"nesterov"``: SGD with Nesterov momentum; ``"nag"``: HETAL's NAG; ``"sgd"``: plain SGD.

    ``momentum`` is used by ``"nesterov"`` only (HETAL's settings), e.g.
    ``from_name("nesterov", model.parameters(), lr=1.0, momentum=0.9)``.
    """
    if name == "nag":
        return NAG(params, lr=lr)
    if name == "nesterov":
        return SGD(params, lr=lr, momentum=momentum, nesterov=True)
    if name == "sgd":
        return SGD(params, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {NAMES}")
