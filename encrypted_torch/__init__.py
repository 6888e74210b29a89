"""encrypted_torch: PyTorch-style training on CKKS-encrypted data (HETAL on SEAL)."""

from .autograd import Function, enable_grad, is_grad_enabled, no_grad, set_grad_enabled
from .ckks import PRESETS, CKKSParams, OpCounts, PublicContext, count_ops
from .errors import (
    ContextMismatchError,
    ContextNotLoadedError,
    DepthError,
    DomainError,
    EncryptionRequiredError,
    EncTorchError,
    GraphFreedError,
    KeyRoleError,
    MissingRotationKeyError,
    SerializationError,
    ShapeError,
)
from .refresh import Refresher, current_refresher, refresh_with
from .serialization import load, load_context, save
from .tensor import BlockLayout, EncTensor, encrypt, unit_shape

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # Lazy, so that server processes importing encrypted_torch never load the key owner's module.
    if name == "SecretContext":
        from .ckks.secret import SecretContext

        return SecretContext
    raise AttributeError(f"module 'encrypted_torch' has no attribute {name!r}")

__all__ = [
    "PRESETS", "BlockLayout", "CKKSParams", "ContextMismatchError", "ContextNotLoadedError", "DepthError",
    "DomainError", "EncTensor", "EncTorchError", "EncryptionRequiredError", "Function", "GraphFreedError",
    "KeyRoleError",
    "MissingRotationKeyError", "OpCounts", "PublicContext", "Refresher", "SecretContext", "SerializationError",
    "ShapeError", "count_ops", "current_refresher", "enable_grad", "encrypt", "is_grad_enabled", "load",
    "load_context", "no_grad", "refresh_with", "save", "set_grad_enabled", "unit_shape",
]
