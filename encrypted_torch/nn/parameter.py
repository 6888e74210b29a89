"""Parameter: an EncTensor a Module owns and an optimizer updates in place."""

from __future__ import annotations

from ..tensor.enctensor import EncTensor


class Parameter(EncTensor):
    """An encrypted leaf tensor with ``requires_grad=True`` whose ciphertexts can be swapped in place.

    The optimizer replaces the ciphertexts (``p.set_(new)``) so that the object, and any
    optimizer state keyed by it, stays the same.

    ``use_levels``: the levels the owning module's forward consumes from it (None: unknown), set by
    the module. The optimizer keeps the parameter at that level when it can, so that neither its
    update nor its next use asks for a refresh the other could have avoided.
    """

    use_levels: int | None = None

    def __init__(self, data: EncTensor, requires_grad: bool = True) -> None:
        super().__init__(data.blocks, data.layout, data.ctx, requires_grad=requires_grad)

    def set_(self, data: EncTensor) -> Parameter:
        """Take ``data``'s ciphertexts (same layout and keys); like ``p.data = data`` in torch."""
        if data.layout != self.layout or data.ctx.fingerprint != self.ctx.fingerprint:
            from ..errors import ShapeError

            raise ShapeError(f"cannot set a {self.layout.describe()} parameter from "
                             f"{data.layout.describe()} data (or another key)")
        self._blocks = data.blocks
        return self

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()

    __hash__ = object.__hash__
