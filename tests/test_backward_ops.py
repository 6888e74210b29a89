"""Backward of every elementwise op and broadcast, against torch.autograd (float64), on both backends.

A mutation audit found ``Neg.backward`` returning ``grad`` instead of ``-grad`` passed every backward
test: each op here is differentiated alone, with a random upstream gradient, so a wrong sign, a
dropped term or a missing broadcast reduction in any one rule fails its own row.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

import encrypted_torch as et
from encrypted_torch.ckks.noise import ckks_tolerance

PARAMS = et.PRESETS["test"]

# name → (encrypted fn, torch fn, levels of the forward); ``x`` and ``z`` require grad, ``p`` is plain
UNARY = {
    "neg": (lambda x, z, p: -x, lambda x, z, p: -x, 0),
    "add": (lambda x, z, p: x + z, lambda x, z, p: x + z, 0),
    "sub": (lambda x, z, p: x - z, lambda x, z, p: x - z, 0),
    "rsub_enc": (lambda x, z, p: z - x, lambda x, z, p: z - x, 0),
    "mul": (lambda x, z, p: x * z, lambda x, z, p: x * z, 1),
    "square": (lambda x, z, p: x * x, lambda x, z, p: x * x, 1),
    "add_plain": (lambda x, z, p: x + p, lambda x, z, p: x + p, 0),
    "rsub_plain": (lambda x, z, p: p - x, lambda x, z, p: p - x, 0),
    "mul_plain": (lambda x, z, p: x * p, lambda x, z, p: x * p, 1),
    "rmul_plain": (lambda x, z, p: p * x, lambda x, z, p: p * x, 1),
    "mul_row": (lambda x, z, p: x * p[:1], lambda x, z, p: x * p[:1], 1),
    "add_row": (lambda x, z, p: x + p[:1], lambda x, z, p: x + p[:1], 0),
    "mul_scalar": (lambda x, z, p: x * -1.5, lambda x, z, p: x * -1.5, 1),
    "div_scalar": (lambda x, z, p: x / 4.0, lambda x, z, p: x / 4.0, 1),
    "rsub_scalar": (lambda x, z, p: 2.0 - x, lambda x, z, p: 2.0 - x, 0),
    "chain": (lambda x, z, p: -(x * z) + x * p - z, lambda x, z, p: -(x * z) + x * p - z, 1),
}
REDUCTIONS = {  # output shapes differ from the input's
    "sum_rows": (lambda x: x.sum(1), lambda x: x.sum(1, keepdim=True)),
    "sum_cols": (lambda x: x.sum(0), lambda x: x.sum(0, keepdim=True)),
    "mean_rows": (lambda x: x.mean(1), lambda x: x.mean(1, keepdim=True)),
    "mean_cols": (lambda x: x.mean(0), lambda x: x.mean(0, keepdim=True)),
}
SHAPES = st.sampled_from([(3, 5, None), (17, 40, (16, 256)), (70, 9, (64, 64))])


def _rand(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1


def _tolerance(ctx: et.SecretContext, depth: int) -> float:
    if ctx.backend_name == "plain":
        return 1e-9
    return ckks_tolerance(ctx.params, magnitude=4, keyswitches=16, depth=depth + 2)


@pytest.mark.parametrize("op", sorted(UNARY))
@given(shape=SHAPES, seed=st.integers(0, 2**31 - 1))
@example(shape=(17, 40, (16, 256)), seed=1)
def test_backward_of_each_elementwise_op_matches_torch(any_ctx, op, shape, seed):
    fn, ref, depth = UNARY[op]
    rows, cols, unit = shape
    x, z, p, g = (_rand((rows, cols), seed + i) for i in range(4))
    ex = et.encrypt(x, any_ctx, unit=unit, requires_grad=True)
    ez = et.encrypt(z, any_ctx, unit=unit, requires_grad=True)
    out = fn(ex, ez, p)
    out.backward(et.encrypt(g, any_ctx, unit=ex.layout.unit))
    tx, tz = x.clone().requires_grad_(), z.clone().requires_grad_()
    ref(tx, tz, p).backward(g)
    tol = _tolerance(any_ctx, depth)
    for enc_t, torch_t in ((ex, tx), (ez, tz)):
        if torch_t.grad is None:
            assert enc_t.grad is None, f"{op}: a gradient where torch has none"
            continue
        assert enc_t.grad is not None, f"{op}: no gradient where torch has one"
        got = any_ctx.decrypt(enc_t.grad)
        torch.testing.assert_close(got, torch_t.grad, atol=tol, rtol=0, msg=lambda m, o=op: f"{o}: {m}")


@pytest.mark.parametrize("op", sorted(REDUCTIONS))
@given(shape=SHAPES, seed=st.integers(0, 2**31 - 1))
def test_backward_of_each_reduction_broadcasts_like_torch(any_ctx, op, shape, seed):
    fn, ref = REDUCTIONS[op]
    rows, cols, unit = shape
    x = _rand((rows, cols), seed)
    ex = et.encrypt(x, any_ctx, unit=unit, requires_grad=True)
    out = fn(ex)
    g = _rand(tuple(out.shape), seed + 7)
    out.backward(et.encrypt(g, any_ctx, layout=out.layout))
    tx = x.clone().requires_grad_()
    ref(tx).backward(g)
    got = any_ctx.decrypt(ex.grad)
    torch.testing.assert_close(got, tx.grad, atol=_tolerance(any_ctx, 2), rtol=0)
