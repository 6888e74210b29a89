"""A small autograd: ``Function.forward/backward`` with a ctx, recorded on a tape (torch's names).

Gradients of encrypted tensors are encrypted tensors; the backward rules run homomorphically.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any

from ..errors import GraphFreedError
from ..profiling import section

# Like the refresher and the op counters, ambient state is a ContextVar: each thread and asyncio
# task starts from its own value (True), and a dry run in an empty Context sees the default.
_grad_enabled: contextvars.ContextVar[bool] = contextvars.ContextVar("encrypted_torch_grad_enabled", default=True)


def is_grad_enabled() -> bool:
    return _grad_enabled.get()


class _GradMode(contextlib.ContextDecorator):
    """Sets the grad mode on entry and restores the previous one on exit; nests, and as a decorator
    each call gets its own instance (recursion, threads)."""

    MODE = True

    def __init__(self) -> None:
        self._prev: list[bool] = []

    def _recreate_cm(self) -> _GradMode:
        return type(self)()

    def __enter__(self) -> None:
        self._prev.append(is_grad_enabled())
        _grad_enabled.set(self.MODE)

    def __exit__(self, *exc: Any) -> None:
        _grad_enabled.set(self._prev.pop())


class no_grad(_GradMode):  # noqa: N801 (torch's name)
    """Run ops without recording them for backward (validation, optimizer steps); a context manager
    or a decorator, as torch's ``no_grad``."""

    MODE = False


class enable_grad(_GradMode):  # noqa: N801 (torch's name)
    """Record ops again inside a ``no_grad`` block, as torch's ``enable_grad``."""

    MODE = True


class set_grad_enabled(_GradMode):  # noqa: N801 (torch's name)
    """Turn recording on or off: at once when called, and back to the previous mode when used as a
    context manager or decorator that exits (torch's ``set_grad_enabled``)."""

    def __init__(self, mode: bool) -> None:
        super().__init__()
        self.MODE = bool(mode)
        self._prev.append(is_grad_enabled())
        _grad_enabled.set(self.MODE)

    def _recreate_cm(self) -> _GradMode:
        return set_grad_enabled(self.MODE)

    def __enter__(self) -> None:
        _grad_enabled.set(self.MODE)  # the previous mode was taken when called


class FunctionCtx:
    """What ``forward`` leaves for ``backward``.

    ``saved_tensors`` is freed after the backward pass that uses it, unless that pass was called
    with ``retain_graph=True`` (torch's rule); reading it afterwards raises GraphFreedError.
    """

    def __init__(self, needs_input_grad: tuple[bool, ...]) -> None:
        self.needs_input_grad = needs_input_grad
        self._saved: tuple[Any, ...] | None = ()

    def save_for_backward(self, *tensors: Any) -> None:
        self._saved = tensors

    @property
    def saved_tensors(self) -> tuple[Any, ...]:
        if self._saved is None:
            raise GraphFreedError(FREED)
        return self._saved


FREED = ("Trying to backward through the graph a second time (or directly access saved tensors "
         "after they have already been freed). Saved intermediate values of the graph are freed "
         "when you call .backward(). Specify retain_graph=True if you need to backward through "
         "the graph a second time or if you need to access saved tensors after calling backward.")


class Node:
    """One recorded op: its function, ctx and the tensors it consumed."""

    def __init__(self, fn: type[Function], ctx: FunctionCtx, inputs: tuple[Any, ...]) -> None:
        self.fn, self.ctx, self.inputs = fn, ctx, inputs
        self.released = False

    def release(self) -> None:
        """Free the saved tensors (ciphertexts); the node cannot run backward again."""
        self.ctx._saved = None
        self.released = True

    def __repr__(self) -> str:
        return f"<{self.fn.__name__}Backward>"


class Function:
    """Subclass with static ``forward(ctx, *args)`` and ``backward(ctx, grad)``.

    ``backward`` returns one gradient (or None) per forward argument. ``LEVELS`` is the number
    of levels the forward consumes, documented next to the rule.
    """

    LEVELS: int = 0
    SECTION: str = "elementwise"  # where its time is charged in step breakdowns (profiling.section)

    @staticmethod
    def forward(ctx: FunctionCtx, *args: Any) -> Any:
        raise NotImplementedError

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Any) -> Any:
        raise NotImplementedError

    @classmethod
    def apply(cls, *args: Any) -> Any:
        needs = tuple(bool(getattr(a, "requires_grad", False)) for a in args)
        ctx = FunctionCtx(needs)
        with section(cls.SECTION):
            out = cls.forward(ctx, *args)
        if is_grad_enabled() and any(needs):
            out.requires_grad = True
            out.grad_fn = Node(cls, ctx, args)
        return out


def backward(root: Any, grad: Any, retain_graph: bool = False) -> None:
    """Accumulate d(root)/d(leaf) into every leaf's ``.grad``, in reverse topological order.

    All or nothing: the leaves' ``.grad`` change only once every node's backward has run. Unless
    ``retain_graph``, every node of the graph is then released (its saved tensors freed), and a
    second backward through any of them raises GraphFreedError before computing anything. Unlike
    torch, this holds for nodes that saved nothing too: a doubled encrypted gradient would go unseen.
    """
    order: list[Any] = []
    seen: set[int] = set()

    def visit(t: Any) -> None:
        if id(t) in seen:
            return
        seen.add(id(t))
        if t.grad_fn is not None:
            for inp in t.grad_fn.inputs:
                if getattr(inp, "requires_grad", False):
                    visit(inp)
        order.append(t)

    visit(root)
    nodes = [t.grad_fn for t in order if t.grad_fn is not None]
    if any(node.released for node in nodes):
        raise GraphFreedError(FREED)
    grads: dict[int, Any] = {id(root): grad}
    leaf_grads: list[tuple[Any, Any]] = []
    for t in reversed(order):
        g = grads.pop(id(t), None)
        if g is None:
            continue
        if t.grad_fn is None:
            leaf_grads.append((t, g))
            continue
        with no_grad(), section(t.grad_fn.fn.SECTION):
            in_grads = t.grad_fn.fn.backward(t.grad_fn.ctx, g)
        if not isinstance(in_grads, tuple):
            in_grads = (in_grads,)
        for inp, ig in zip(t.grad_fn.inputs, in_grads, strict=False):
            if ig is None or not getattr(inp, "requires_grad", False):
                continue
            grads[id(inp)] = ig if id(inp) not in grads else grads[id(inp)] + ig
    with no_grad():
        for t, g in leaf_grads:
            t.grad = g if t.grad is None else t.grad + g
    if not retain_graph:
        for node in nodes:
            node.release()
