"""Optimizer: torch.optim's base class (param_groups, state, zero_grad, step) over encrypted params.

``encrypted_torch.optim.Optimizer`` *is* a ``torch.optim.Optimizer`` (a subclass), so torch's own
``torch.optim.lr_scheduler`` classes drive it unchanged::

    opt = optim.SGD(model.parameters(), lr=1.0, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5)
    for x, y in loader:
        opt.zero_grad(); criterion(model(x), y).backward(); opt.step()
        sched.step()

Learning rates are public plain Python numbers in ``opt.param_groups[i]["lr"]``, read by every
``step()``: a scheduler (or your own code) changes them between steps.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import torch

from ..autograd.function import no_grad
from ..errors import ContextMismatchError, ShapeError
from ..nn.parameter import Parameter
from ..profiling import section
from ..tensor.enctensor import EncTensor


class Optimizer(torch.optim.Optimizer):
    """Base class: subclasses implement ``_update(group, param, state)``; state stays encrypted.

    torch's ``__init__`` is not called: it would accept only ``torch.Tensor`` params. This one
    sets what torch's methods and schedulers read — ``defaults``, ``state`` (a dict keyed by
    Parameter), ``param_groups`` (dicts with "params" and the hyperparameters) and the hook
    tables — and ``_patch_step_function()`` (torch's; it wraps ``step`` so step pre/post hooks
    run). ``state_dict``, ``load_state_dict``, ``zero_grad`` and ``add_param_group`` are our own:
    torch's assume plaintext tensors.
    """

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        if isinstance(params, (torch.Tensor, EncTensor)):
            raise TypeError("params should be an iterable of Parameters or dicts, "
                            f"got a single {type(params).__name__}")
        self.defaults = defaults
        self._init_hooks()
        self._patch_step_function()
        self.state: dict[Parameter, dict[str, Any]] = {}
        self.param_groups: list[dict[str, Any]] = []
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        for g in groups:
            self.add_param_group(g)

    def _init_hooks(self) -> None:
        self._optimizer_step_pre_hooks: OrderedDict[int, Any] = OrderedDict()
        self._optimizer_step_post_hooks: OrderedDict[int, Any] = OrderedDict()
        self._optimizer_state_dict_pre_hooks: OrderedDict[int, Any] = OrderedDict()
        self._optimizer_state_dict_post_hooks: OrderedDict[int, Any] = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks: OrderedDict[int, Any] = OrderedDict()
        self._optimizer_load_state_dict_post_hooks: OrderedDict[int, Any] = OrderedDict()

    def __setstate__(self, state: dict[str, Any]) -> None:
        # torch's __getstate__ keeps defaults, state and param_groups (not a scheduler's patched
        # step, a closure); its __setstate__ would also add "differentiable" to our defaults
        self.__dict__.update(state)
        self._init_hooks()
        self._patch_step_function()

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if isinstance(param_group["params"], (torch.Tensor, EncTensor)):
            param_group = {**param_group, "params": [param_group["params"]]}
        group = {**self.defaults, **param_group, "params": list(param_group["params"])}
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        for p in group["params"]:
            if not isinstance(p, Parameter):
                raise TypeError(f"optimizers take encrypted Parameters, got {type(p).__name__}; "
                                "call model.encrypt(ctx, ...) first")
            if id(p) in seen:
                raise ValueError("some parameters appear in more than one parameter group")
            seen.add(id(p))
        self.param_groups.append(group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop the gradients (an encrypted gradient cannot be zeroed in place: always set to None)."""
        for g in self.param_groups:
            for p in g["params"]:
                p.grad = None

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One update of every parameter that has a gradient; returns ``closure()``'s loss if given.

        As in torch, ``closure`` zeroes the gradients, recomputes the loss, calls ``backward()``
        and returns the loss; it runs first, in the caller's grad mode. Each update reads its
        group's hyperparameters (``lr`` included) now, so changes between steps take effect.
        """
        loss = closure() if closure is not None else None
        with no_grad(), section("optimizer"):
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.set_(self._update(group, p, self.state.setdefault(p, {})))
        return loss

    def _update(self, group: dict[str, Any], param: Parameter, state: dict[str, Any]) -> EncTensor:
        """The new value of ``param`` (its gradient is ``param.grad``); updates ``state`` in place."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Hyperparameters, step counters and encrypted buffers, keyed by parameter index.

        Save it with ``torch.save`` or, atomically, ``encrypted_torch.save`` (docs/internals.md).
        """
        index = {p: i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}
        state = {index[p]: dict(s) for p, s in self.state.items()}
        groups = [{k: v for k, v in g.items() if k != "params"} | {"params": [index[p] for p in g["params"]]}
                  for g in self.param_groups]
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        sd = state_dict
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


EncOptimizer = Optimizer  # the design's name for the same class
