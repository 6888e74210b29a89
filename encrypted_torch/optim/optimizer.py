"""EncOptimizer: torch.optim's structure (param_groups, state, zero_grad, step) over encrypted params."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..errors import ContextMismatchError, ShapeError
from ..nn.parameter import Parameter
from ..tensor.enctensor import EncTensor


class EncOptimizer:
    """Base class: subclasses implement ``step()``; state (momentum buffers) stays encrypted.

    Learning rates and schedules are public plain Python numbers.
    """

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        self.defaults = defaults
        self.state: dict[Parameter, dict[str, Any]] = {}
        self.param_groups: list[dict[str, Any]] = []
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        for g in groups:
            self.add_param_group(g)

    def add_param_group(self, group: dict[str, Any]) -> None:
        group = {**self.defaults, **group, "params": list(group["params"])}
        for p in group["params"]:
            if not isinstance(p, Parameter):
                raise TypeError(f"optimizers take encrypted Parameters, got {type(p).__name__}; "
                                "call model.encrypt(ctx, ...) first")
        self.param_groups.append(group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for g in self.param_groups:
            for p in g["params"]:
                p.grad = None

    def step(self) -> None:
        raise NotImplementedError

    # --- checkpoints ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Hyperparameters, step counters and encrypted buffers, keyed by parameter index.

        Save it with ``torch.save`` or, atomically, ``encrypted_torch.save`` (docs/internals.md).
        """
        index = {p: i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}
        state = {index[p]: dict(s) for p, s in self.state.items()}
        groups = [{k: v for k, v in g.items() if k != "params"} | {"params": [index[p] for p in g["params"]]}
                  for g in self.param_groups]
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        params = [p for g in self.param_groups for p in g["params"]]
        if len(sd["param_groups"]) != len(self.param_groups):
            raise ShapeError("optimizer state has a different number of parameter groups")
        for g, saved in zip(self.param_groups, sd["param_groups"], strict=True):
            g.update({k: v for k, v in saved.items() if k != "params"})
        self.state = {}
        for i, s in sd["state"].items():
            p = params[int(i)]
            for v in s.values():
                if isinstance(v, EncTensor) and v.layout != p.layout:
                    raise ShapeError("an optimizer buffer does not match its parameter's layout")
                if isinstance(v, EncTensor) and v.ctx.fingerprint != p.ctx.fingerprint:
                    raise ContextMismatchError("an optimizer buffer is encrypted under another key "
                                               "than its parameter")
            self.state[p] = dict(s)
