"""A small autograd: ``Function.forward/backward`` with a ctx, recorded on a tape (torch's names).

Gradients of encrypted tensors are encrypted tensors; the backward rules run homomorphically.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from ..errors import GraphFreedError
from ..profiling import section

_state = threading.local()


def is_grad_enabled() -> bool:
    return getattr(_state, "enabled", True)


@contextlib.contextmanager
def no_grad() -> Iterator[None]:
    """Run ops without recording them for backward (validation, optimizer steps)."""
    prev = is_grad_enabled()
    _state.enabled = False
    try:
        yield
    finally:
        _state.enabled = prev


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
