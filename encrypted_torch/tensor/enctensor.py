"""EncTensor: a 2-D matrix packed into CKKS ciphertexts, with torch-like ops and autograd.

It holds only a PublicContext: anything that can see an EncTensor (the server) cannot decrypt
it. Values never appear in its repr, and it refuses bool()/float().
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import torch

from ..autograd import function as autograd
from ..ckks import cipher_codec, registry, serialize
from ..ckks.evaluator import Cipher
from ..ckks.public import PublicContext
from ..errors import ContextMismatchError, KeyRoleError, SerializationError, ShapeError
from ..refresh import ensure_levels
from . import ops
from .base import TensorBase
from .layout import BlockLayout, unit_shape
from .matmul import Transposed, matmul

KIND = "enc_tensor"


class EncTensor(TensorBase):
    """An encrypted float matrix in HETAL's block layout (see ``layout.BlockLayout``).

    >>> x = encrypt(torch.randn(4, 3), secret_ctx)     # doctest: +SKIP
    >>> secret_ctx.decrypt((x + 1) * 2)                 # doctest: +SKIP
    """

    __array_ufunc__ = None  # numpy operands on the left defer to our reflected ops (ndarray + x)

    def _new(self, blocks: list[list[Cipher]], layout: BlockLayout | None = None) -> EncTensor:
        return EncTensor(blocks, layout or self.layout, self.ctx)

    def __repr__(self) -> str:
        grad = f", grad_fn={self.grad_fn}" if self.grad_fn else (
            ", requires_grad=True" if self.requires_grad else "")
        return (f"EncTensor(shape={tuple(self.shape)}, layout={self.layout.describe()}, "
                f"level={self.level}/{self.ctx.top_level}, backend={self.ctx.backend_name!r}{grad})")

    def _refuse(self, what: str) -> Any:
        raise TypeError(f"{what}() of an EncTensor would need its values; the server cannot see "
                        "them. Decrypt with the key owner's SecretContext.")

    def __bool__(self) -> bool:
        return self._refuse("bool")

    def __float__(self) -> float:
        return self._refuse("float")

    def __int__(self) -> int:
        return self._refuse("int")

    def __index__(self) -> int:
        return self._refuse("index")

    def item(self) -> Any:
        return self._refuse("item")

    def numpy(self) -> Any:
        return self._refuse("numpy")

    def tolist(self) -> Any:
        return self._refuse("tolist")

    def __len__(self) -> int:
        return self.shape[0]

    def __add__(self, other: Any) -> EncTensor:
        return ops.Add.apply(self, other)

    def __radd__(self, other: Any) -> EncTensor:
        return ops.Add.apply(self, other)

    def __sub__(self, other: Any) -> EncTensor:
        return ops.Sub.apply(self, other)

    def __rsub__(self, other: Any) -> EncTensor:
        return ops.Add.apply(ops.Neg.apply(self), other)

    def __mul__(self, other: Any) -> EncTensor:
        return ops.Mul.apply(self, other)

    def __rmul__(self, other: Any) -> EncTensor:
        return ops.Mul.apply(self, other)

    def __neg__(self) -> EncTensor:
        return ops.Neg.apply(self)

    def __truediv__(self, other: Any) -> EncTensor:
        if isinstance(other, EncTensor):
            raise TypeError("division by an EncTensor needs an approximate inverse "
                            "(see encrypted_torch.approx); divide by plain numbers only")
        return ops.Mul.apply(self, 1.0 / other)

    def sum(self, dim: int | None = None) -> EncTensor:
        """Sum over ``dim`` (0 rows, 1 columns) keeping it, or over both; 1 level per dim."""
        if dim is None:
            return self.sum(0).sum(1)
        if dim < 0:
            dim += 2
        return ops.Sum.apply(self, dim)

    def mean(self, dim: int | None = None) -> EncTensor:
        n = self.shape.numel() if dim is None else self.shape[dim if dim >= 0 else dim + 2]
        return self.sum(dim) * (1.0 / n)

    @property
    def T(self) -> Transposed:  # noqa: N802 (torch's name)
        """Lazy transpose, an operand of ``@``: ``x @ w.T`` (DiagABT), ``g.T @ x`` (DiagATB)."""
        return Transposed(self)

    def __matmul__(self, other: Any) -> Any:
        """``x @ w.T`` (w encrypted, vertical) or ``x @ m`` (m a plaintext features × classes matrix)."""
        return matmul(self, other)

    def requires_grad_(self, flag: bool = True) -> EncTensor:
        self.requires_grad = flag
        return self

    def backward(self, gradient: EncTensor | None = None, retain_graph: bool | None = None) -> None:
        """Backpropagate ``gradient`` (an EncTensor of this shape) to the leaves' ``.grad``.

        As in torch, the graph's saved tensors are freed afterwards; a second backward through it
        raises GraphFreedError unless the first one passed ``retain_graph=True``.
        """
        if gradient is None:
            raise ShapeError("EncTensor.backward needs an explicit encrypted gradient; a scalar "
                             "loss seed is plaintext 1 only for (1, 1) tensors: pass it")
        if gradient.shape != self.shape:
            raise ShapeError(f"gradient of shape {tuple(gradient.shape)} for a {tuple(self.shape)} tensor")
        autograd.backward(self, gradient, retain_graph=bool(retain_graph))

    def detach(self) -> EncTensor:
        return self._new(self._blocks)

    def mod_switch_to(self, level: int) -> EncTensor:
        """Drop every block to ``level`` (cheaper ops afterwards; no noise added)."""
        ev = self.ctx.evaluator
        return self._new([[ev.mod_switch(c, level) for c in row] for row in self._blocks])

    def refresh(self, levels: int | None = None, *, back_at: int | None = None) -> EncTensor:
        """Bring blocks below ``levels`` (default: all) to the top level via the active Refresher
        (or to ``back_at`` levels, when the caller knows it needs no more: cheaper to send)."""
        need = self.ctx.top_level if levels is None else levels
        flat = ensure_levels(self.ciphers(), need, "refresh", back_at=back_at)
        n_b = self.layout.grid[1]
        out = self._new([flat[i : i + n_b] for i in range(0, len(flat), n_b)])
        out.requires_grad = self.requires_grad
        return out

    def _decrypt_with(self, secret: Any) -> torch.Tensor:
        if secret.fingerprint != self.ctx.fingerprint:
            raise ContextMismatchError("this EncTensor was encrypted under another key")
        slots = np.stack([np.stack([secret.decrypt_vector(c).real for c in row]) for row in self._blocks])
        return torch.from_numpy(np.ascontiguousarray(self.layout.unpack(slots))).to(torch.float64)

    # A pickle holds to_bytes() and the context's fingerprint, never the context: unpickling finds
    # the live PublicContext in ckks/registry.py. Like torch, it keeps requires_grad, not grad/grad_fn.
    _subclasses: dict[str, type[EncTensor]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        EncTensor._subclasses[f"{cls.__module__}.{cls.__qualname__}"] = cls

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        data = self.to_bytes()
        # Protocol 2 (torch.save's) pickles bytes as latin-1 text, up to 2x larger; a uint8 tensor
        # becomes a raw record of torch's zip file instead.
        payload: Any = data if isinstance(protocol, int) and protocol >= 3 else (
            torch.frombuffer(bytearray(data), dtype=torch.uint8))
        kind = "" if type(self) is EncTensor else f"{type(self).__module__}.{type(self).__qualname__}"
        return _rebuild_enc_tensor, (self.ctx.fingerprint, payload, self.requires_grad, kind)

    def __copy__(self) -> EncTensor:
        out = self.detach()
        out.requires_grad = self.requires_grad
        return out

    def __deepcopy__(self, memo: dict[int, Any]) -> EncTensor:
        """An independent copy (new ciphertexts, same context), a leaf like the original's data;
        a leaf's ``.grad`` is copied too, as in torch."""
        backend = self.ctx.backend
        blocks = [[Cipher(backend.handle_from_bytes(backend.handle_to_bytes(c.handle)), c.level, c.scale,
                          c.context_id, c.size) for c in row] for row in self._blocks]
        out = EncTensor.__new__(type(self))
        EncTensor.__init__(out, blocks, self.layout, self.ctx, requires_grad=self.requires_grad)
        memo[id(self)] = out
        if self.grad is not None and self.is_leaf:
            out.grad = self.grad.__deepcopy__(memo)
        return out

    def to_bytes(self) -> bytes:
        records, payloads = cipher_codec.dump(self.ctx, self.ciphers())
        meta = {"shape": list(self.layout.shape), "unit": list(self.layout.unit),
                "tiling": self.layout.tiling, "context": self.ctx.fingerprint, "blocks": records}
        sections = {"meta": serialize.dumps_json(meta)}
        sections.update((f"b{k}", raw) for k, raw in enumerate(payloads))
        return serialize.pack(KIND, sections)

    @classmethod
    def from_bytes(cls, data: bytes, ctx: Any) -> EncTensor:
        """Load an EncTensor saved with ``to_bytes`` under the same keys.

        Bytes from a stranger: anything malformed is a SerializationError (ContextMismatchError
        for another key), checked before SEAL sees a ciphertext.
        """
        ctx = _public(ctx)
        sections = serialize.unpack(data, KIND)
        (meta_raw,) = serialize.require(sections, "meta")
        meta = serialize.loads_json(meta_raw, "EncTensor metadata")
        if not isinstance(meta, dict) or set(meta) != {"shape", "unit", "tiling", "context", "blocks"}:
            raise SerializationError("malformed EncTensor metadata: expected shape, unit, tiling, context, blocks")
        shape, unit, tiling, blocks = meta["shape"], meta["unit"], meta["tiling"], meta["blocks"]
        if not (_int_pair(shape) and _int_pair(unit) and isinstance(tiling, str) and isinstance(blocks, list)):
            raise SerializationError("malformed EncTensor metadata: shape and unit must be integer pairs, "
                                     "tiling a string, blocks a list")
        if not isinstance(meta["context"], str) or meta["context"] != ctx.fingerprint:
            raise ContextMismatchError("these bytes were encrypted under another key than ctx's")
        try:
            layout = BlockLayout(tuple(shape), tuple(unit), tiling)
        except ShapeError as err:
            raise SerializationError(f"malformed EncTensor layout: {err}") from None
        n_a, n_b = layout.grid
        if len(blocks) != n_a * n_b or layout.slots != ctx.slots or len(sections) != len(blocks) + 1:
            raise SerializationError("block count or unit shape does not match the layout/context")
        payloads = serialize.require(sections, *(f"b{k}" for k in range(len(blocks))))
        flat = cipher_codec.load(ctx, blocks, payloads, what="block")
        return cls([flat[i : i + n_b] for i in range(0, len(flat), n_b)], layout, ctx)


def _int_pair(v: Any) -> bool:
    return isinstance(v, list) and len(v) == 2 and all(type(x) is int and 0 < x < 2**62 for x in v)


def _public(ctx: Any) -> PublicContext:
    if isinstance(ctx, PublicContext):
        return ctx
    public = getattr(ctx, "public", None)
    if public is None:
        raise KeyRoleError(f"expected a PublicContext or SecretContext, got {type(ctx).__name__}")
    return public()


def _rebuild_enc_tensor(fingerprint: str, payload: Any, requires_grad: bool, kind: str = "") -> EncTensor:
    """Unpickle an EncTensor under the live context with ``fingerprint`` (allowlisted for
    torch.load(weights_only=True): it only parses checksummed bytes)."""
    ctx = registry.lookup(str(fingerprint))
    if isinstance(payload, torch.Tensor):
        if payload.dtype != torch.uint8 or payload.ndim != 1:
            raise SerializationError(f"EncTensor payload of dtype {payload.dtype}, expected 1-D uint8")
        data = payload.numpy().tobytes()
    else:
        data = bytes(payload)
    out = EncTensor.from_bytes(data, ctx)
    cls = EncTensor if not kind else _subclass(str(kind))
    if cls is not EncTensor:
        plain, out = out, EncTensor.__new__(cls)
        EncTensor.__init__(out, plain.blocks, plain.layout, plain.ctx)
    out.requires_grad = bool(requires_grad)
    return out


def _subclass(kind: str) -> type[EncTensor]:
    if kind not in EncTensor._subclasses and kind.startswith("encrypted_torch."):
        importlib.import_module(kind.rsplit(".", 1)[0])  # e.g. nn.parameter, not yet imported
    cls = EncTensor._subclasses.get(kind)
    if cls is None:
        raise SerializationError(f"{kind!r} is not an EncTensor subclass")
    return cls


def encrypt(tensor: Any, ctx: Any, *, unit: tuple[int, int] | None = None, tiling: str = "grid",
            layout: BlockLayout | None = None, requires_grad: bool = False, level: int | None = None,
            seeded: bool = False) -> EncTensor:
    """Encrypt a 2-D tensor (or 1-D, as one row) with the public key, at ``level`` (default: the top).
    ``seeded`` with the key owner's SecretContext as ``ctx``: secret-key encryptions that serialize in
    SEAL's seeded form, half the bytes (for data the key owner saves or uploads).

    ``unit`` (s0, s1) defaults to the smallest power of two ≥ rows for s0 (HETAL.md §2);
    ``tiling`` is ``"grid"``, ``"vertical"`` (weights) or ``"horizontal"`` (logits).
    """
    owner, ctx = ctx, _public(ctx)
    t = torch.as_tensor(tensor).detach().to(torch.float64).cpu()
    if t.ndim == 1:
        t = t.unsqueeze(0)
    if t.ndim != 2:
        raise ShapeError(f"an EncTensor is 2-D; got a {t.ndim}-D tensor of shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ShapeError("cannot encrypt NaN or inf")
    if layout is None:
        if unit is None:
            classes = t.shape[0] if tiling == "vertical" else (t.shape[1] if tiling == "horizontal" else 1)
            unit = unit_shape(t.shape[0] if tiling != "vertical" else 1, classes, ctx.slots)
        layout = BlockLayout(tuple(t.shape), tuple(unit), tiling)
    if layout.shape != tuple(t.shape):
        raise ShapeError(f"layout shape {layout.shape} vs tensor shape {tuple(t.shape)}")
    if layout.slots != ctx.slots:
        raise ShapeError(f"unit {layout.unit} has {layout.slots} slots; the context has {ctx.slots}")
    packed = layout.pack(t.numpy())
    if seeded and callable(getattr(owner, "encrypt_vectors", None)):
        flat = owner.encrypt_vectors([packed[i, j] for i in range(packed.shape[0]) for j in range(packed.shape[1])],
                                     level, seeded=True)
        n_b = packed.shape[1]
        return EncTensor([flat[i : i + n_b] for i in range(0, len(flat), n_b)], layout, ctx,
                         requires_grad=requires_grad)
    ev = ctx.evaluator
    blocks = [[ev.encrypt(packed[i, j], level=level) for j in range(packed.shape[1])] for i in range(packed.shape[0])]
    return EncTensor(blocks, layout, ctx, requires_grad=requires_grad)
