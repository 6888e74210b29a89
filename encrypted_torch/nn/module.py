"""Module: parameters built in plaintext (torch init), then encrypted with the public key."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import torch

from ..errors import EncryptionRequiredError, KeyRoleError, ShapeError
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

    def children(self) -> Iterator[Module]:
        yield from self._modules.values()

    def encrypt(self, ctx: Any, unit: tuple[int, int] | None = None, *, like: Any = None) -> Module:
        """Encrypt every layer's parameters with the public key, in the data's block shape:
        ``like`` is the training data (an EncDataset, a batch, an EncTensor or any iterable of
        batches); ``unit`` the block shape itself (power users). ``ctx``: a PublicContext, or the
        key owner's (SecretContext, KeyOwner), of which only the public part is used.

        >>> model = nn.Linear(64, 10).encrypt(owner, like=train)     # doctest: +SKIP
        """
        for m in self.children():
            m.encrypt(ctx, unit, like=like)
        return self

    def to_torch(self, secret_ctx: Any) -> torch.nn.Module:
        """Decrypt into the plaintext torch module (client side), float64 like ``decrypt``."""
        raise NotImplementedError(f"{type(self).__name__} has no plaintext torch counterpart")

    def decrypted_state_dict(self, secret_ctx: Any) -> OrderedDict[str, torch.Tensor]:
        """torch's state_dict of ``to_torch(secret_ctx)``: float64 tensors under torch's keys
        (``weight``, ``bias``), loadable into the torch module as is."""
        return OrderedDict(self.to_torch(secret_ctx).state_dict())

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

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

    def state_dict(self) -> OrderedDict[str, EncTensor]:
        """Encrypted parameters by name: ``torch.save`` it, or ``encrypted_torch.save`` (atomic)."""
        return OrderedDict((name, p.detach()) for name, p in self.named_parameters())

    def load_state_dict(self, state: dict[str, EncTensor]) -> None:
        """Replace the ciphertexts of every parameter; layouts and keys must match."""
        plain = sorted(k for k, v in state.items() if isinstance(v, torch.Tensor))
        if plain:
            raise EncryptionRequiredError(
                f"load_state_dict got plaintext tensors {plain[:4]}; an encrypted model loads the encrypted "
                "state_dict() of a model like it (et.load(path, public_ctx)). To start from plaintext "
                "weights, load them into the layer before encrypting: nn.Linear(...).load_state_dict("
                "torch_linear.state_dict()), then .encrypt(ctx, like=train)")
        own = dict(self.named_parameters())
        missing, unexpected = set(own) - set(state), set(state) - set(own)
        if missing or unexpected:
            raise ShapeError(f"state_dict mismatch: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
        for name, p in own.items():
            p.set_(state[name])

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        if not self._modules:
            return f"{type(self).__name__}({self.extra_repr()})"
        lines = [f"  ({name}): {m!r}".replace("\n", "\n  ") for name, m in self._modules.items()]
        return f"{type(self).__name__}(\n" + "\n".join(lines) + "\n)"

    def _check_public(self, ctx: Any) -> Any:
        if getattr(ctx, "holds_secret_key", False):
            ctx = ctx.public()
        if getattr(ctx, "holds_secret_key", True):
            raise KeyRoleError("encrypt a module with a PublicContext (or a SecretContext)")
        return ctx


def unit_of(like: Any) -> tuple[int, int]:
    """The block shape of training data: an EncDataset (or stored one), a batch, an EncTensor, or
    an iterable of batches (its first)."""
    if isinstance(like, EncTensor):
        return tuple(like.layout.unit)  # type: ignore[return-value]
    unit = getattr(like, "unit", None)
    if unit is not None:
        return tuple(unit)  # type: ignore[return-value]
    x = getattr(like, "x", None)
    if isinstance(x, EncTensor):
        return tuple(x.layout.unit)  # type: ignore[return-value]
    if isinstance(like, torch.Tensor):
        raise EncryptionRequiredError("like= takes the encrypted training data (key_owner.encrypt_dataset(...)), "
                                      "not a plaintext tensor")
    if isinstance(like, (tuple, list)) and like and isinstance(like[0], EncTensor):
        return tuple(like[0].layout.unit)  # type: ignore[return-value]
    try:
        first = next(iter(like))
    except (TypeError, StopIteration):
        raise ShapeError(f"cannot read a block shape from a {type(like).__name__}; pass like=<the encrypted "
                         "training data>") from None
    return unit_of(first)


def resolve_unit(unit: tuple[int, int] | None, like: Any) -> tuple[int, int]:
    """``unit`` if given, else ``like``'s; a typed error naming the fix when neither is."""
    if unit is not None:
        if like is not None and tuple(unit) != unit_of(like):
            raise ShapeError(f"unit {tuple(unit)} disagrees with the data's {unit_of(like)}; pass one of them")
        return tuple(unit)  # type: ignore[return-value]
    if like is None:
        raise ShapeError("encrypting a model needs the data's block shape: model.encrypt(ctx, like=train), "
                         "with train the encrypted training data (key_owner.encrypt_dataset(...))")
    return unit_of(like)

