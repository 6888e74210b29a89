"""hypothesis strategies for encrypted tests: shapes that fit the slots, bounded values, EncTensors.

Values are always finite and bounded (CKKS wraps values above ``params.max_abs_value`` silently);
tensors are float64, like ``SecretContext.decrypt``'s results.

>>> @given(pair=enc_tensors(bound=2.0))          # doctest: +SKIP
... def test_square(pair):                        # both backends, the test preset's keys
...     a, x = pair
...     assert_close(x * x, a * a)                # the kit finds the key of its own contexts
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ..tensor.enctensor import EncTensor, encrypt
from ..tensor.layout import unit_shape
from .contexts import BACKENDS, secret_context


def _slots(ctx: Any) -> int:
    if isinstance(ctx, int):
        return ctx
    slots = getattr(ctx, "slots", None)
    if slots is None:
        raise TypeError(f"expected a context, CKKSParams or a slot count, not {type(ctx).__name__}")
    return int(slots)


@st.composite
def shapes(draw: st.DrawFn, ctx: Any, *, max_blocks: int = 1, max_rows: int = 64, max_cols: int = 64,
           min_rows: int = 1, min_cols: int = 1) -> tuple[int, int]:
    """2-D shapes (rows, cols) whose default layout takes at most ``max_blocks`` ciphertexts of ``ctx``
    (a context, CKKSParams or slot count). Small by default: SEAL costs ~ms per ciphertext op.

    The default layout puts rows in s0 = next_pow2(rows) slots and columns in s1 = slots / s0, so a
    shape fits ``max_blocks`` ciphertexts when cols ≤ s1 · max_blocks.
    """
    slots = _slots(ctx)
    rows = draw(st.integers(min_rows, min(max_rows, slots)))
    s1 = unit_shape(rows, 1, slots)[1]
    top = max(1, min(max_cols, s1 * max_blocks))
    cols = draw(st.integers(min(min_cols, top), top))
    return rows, cols


def uniform(shape: tuple[int, ...], bound: float, seed: int) -> torch.Tensor:
    """A float64 tensor of ``shape``, uniform in [−bound, bound], from ``seed`` (reproducible)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1) * bound


def values(shape: tuple[int, ...], *, bound: float = 1.0) -> st.SearchStrategy[torch.Tensor]:
    """float64 tensors of ``shape`` with entries in [−bound, bound].

    Half the draws are dense ``uniform(shape, bound, seed)`` tensors (typical inputs; a failing one
    prints as that call), half are hypothesis arrays (a few distinct values, among them 0 and ±bound,
    which shrink to a minimal failing case).
    """
    if not bound >= 0:
        raise ValueError(f"bound must be ≥ 0, got {bound}")
    dense = st.builds(uniform, st.just(tuple(shape)), st.just(float(bound)), st.integers(0, 2**32 - 1))
    edges = st.sampled_from([0.0, bound, -bound])
    elements = st.one_of(edges, st.floats(-bound, bound, allow_nan=False, allow_infinity=False))
    sparse = hnp.arrays(np.float64, shape, elements=elements).map(torch.from_numpy)
    return st.one_of(dense, sparse)


def logits(config: Any = None, *, rows: int | st.SearchStrategy[int] | None = None,
           classes: int | st.SearchStrategy[int] | None = None) -> st.SearchStrategy[torch.Tensor]:
    """Logit matrices (rows, classes) inside a ``SoftmaxConfig``'s domain [−Rmax, Rmax] (default config:
    Rmax = 128), where its error bound holds; 1–8 rows and 2–10 classes unless given."""
    rows = st.integers(1, 8) if rows is None else rows
    classes = st.integers(2, 10) if classes is None else classes
    if config is None:
        from ..approx.softmax import SoftmaxConfig

        config = SoftmaxConfig()
    radius = float(config.domain_radius)
    rows_st = rows if isinstance(rows, st.SearchStrategy) else st.just(rows)
    classes_st = classes if isinstance(classes, st.SearchStrategy) else st.just(classes)
    return st.tuples(rows_st, classes_st).flatmap(lambda rc: values(rc, bound=radius))


def contexts(preset: str = "test", backends: tuple[str, ...] = BACKENDS) -> st.SearchStrategy[Any]:
    """Session-cached SecretContexts of ``preset`` on each of ``backends`` (keys made on first draw)."""
    return st.sampled_from(backends).map(lambda backend: secret_context(preset, backend))


@st.composite
def enc_tensors(draw: st.DrawFn, ctx: Any = None, *, shape: tuple[int, int] | None = None, bound: float = 1.0,
                max_blocks: int = 1, max_rows: int = 64, max_cols: int = 64,
                requires_grad: bool = False) -> tuple[torch.Tensor, EncTensor]:
    """``(plain, encrypted)`` pairs: a float64 tensor with entries in [−bound, bound] and its EncTensor.

    ``ctx`` is a SecretContext or PublicContext; ``None`` draws the ``test`` preset on both backends
    (``contexts()``), so one property runs exactly and on real CKKS.
    """
    if ctx is None:
        ctx = draw(contexts())
    if shape is None:
        shape = draw(shapes(ctx, max_blocks=max_blocks, max_rows=max_rows, max_cols=max_cols))
    plain = draw(values(tuple(shape), bound=bound))
    return plain, encrypt(plain, ctx, requires_grad=requires_grad)
