"""Module: parameters built in plaintext (torch init), then encrypted with the public key."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from ..errors import KeyRoleError, ShapeError
from ..tensor.enctensor import EncTensor
from .parameter import Parameter


class Module:
    """Base class of encrypted layers; mirrors torch.nn.Module's names where they mean the same."""

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def forward(self, *args: Any) -> Any:
        raise NotImplementedError

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    # --- parameters -------------------------------------------------------------------------------
    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        for name, p in self._parameters.items():
            yield prefix + name, p
        for mname, m in self._modules.items():
            yield from m.named_parameters(prefix + mname + ".")

    def parameters(self) -> Iterator[Parameter]:
        for _, p in self.named_parameters():
            yield p

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.parameters():
            p.grad = None

    def train(self, mode: bool = True) -> Module:
        object.__setattr__(self, "training", mode)
        for m in self._modules.values():
            m.train(mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    @property
    def is_encrypted(self) -> bool:
        return all(isinstance(p, Parameter) for p in self._parameters.values()) and bool(self._parameters)

    # --- state ----------------------------------------------------------------------------------------
    def state_dict(self) -> OrderedDict[str, EncTensor]:
        """Encrypted parameters by name: ``torch.save`` it, or ``encrypted_torch.save`` (atomic)."""
        return OrderedDict((name, p.detach()) for name, p in self.named_parameters())

    def load_state_dict(self, state: dict[str, EncTensor]) -> None:
        """Replace the ciphertexts of every parameter; layouts and keys must match."""
        own = dict(self.named_parameters())
        missing, unexpected = set(own) - set(state), set(state) - set(own)
        if missing or unexpected:
            raise ShapeError(f"state_dict mismatch: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
        for name, p in own.items():
            p.set_(state[name])

    def _check_public(self, ctx: Any) -> Any:
        if getattr(ctx, "holds_secret_key", False):
            ctx = ctx.public()
        if getattr(ctx, "holds_secret_key", True):
            raise KeyRoleError("encrypt a module with a PublicContext (or a SecretContext)")
        return ctx
