"""``t.T`` of an EncTensor: a lazy view that only the matrix products read (no ciphertext moves)."""

from __future__ import annotations

from typing import Any

import torch


class Transposed:
    """The transpose of an EncTensor as an operand of ``@``: ``x @ w.T`` and ``g.T @ x``.

    Nothing is re-packed: DiagABT reads ``w`` in its vertical tiling, DiagATB reads ``g`` in its
    horizontal one. ``.T`` gives the EncTensor back.
    """

    __slots__ = ("base",)

    def __init__(self, base: Any) -> None:
        self.base = base

    @property
    def T(self) -> Any:  # noqa: N802 (torch's name)
        return self.base

    @property
    def shape(self) -> torch.Size:
        rows, cols = self.base.shape
        return torch.Size((cols, rows))

    @property
    def requires_grad(self) -> bool:
        return bool(self.base.requires_grad)

    def __matmul__(self, other: Any) -> Any:
        from .functions import matmul

        return matmul(self, other)

    def __bool__(self) -> bool:
        return self.base.__bool__()

    def __repr__(self) -> str:
        return f"Transposed({self.base!r})"
