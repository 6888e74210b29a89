"""EncTensor ops against torch float64 on both backends, block layouts, and the tensor's contracts.

Shapes are drawn so that tensors span several block rows and columns with padding; values are
bounded. On SEAL the tolerance is ``ckks_tolerance`` for the op's depth and key switches; on the
plaintext backend values match to float64 rounding.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

import encrypted_torch as et
from encrypted_torch.ckks.noise import ckks_tolerance
from encrypted_torch.tensor.layout import BlockLayout, next_pow2, unit_shape

PARAMS = et.PRESETS["test"]
SLOTS = PARAMS.slots
TOP = PARAMS.levels
UNITS = [None, (8, 512), (64, 64), (512, 8)]


@st.composite
def shapes(draw: st.DrawFn) -> tuple[int, int, tuple[int, int] | None]:
    """(rows, cols, unit): up to 3×3 blocks of the unit, padding in both directions."""
    unit = draw(st.sampled_from(UNITS))
    if unit is None:  # HETAL's rule picks s0 = next_pow2(rows)
        rows = draw(st.integers(1, 80))
        s0, s1 = unit_shape(rows, 1, SLOTS)
    else:
        s0, s1 = unit
        rows = draw(st.integers(1, min(3 * s0, 140)))
    cols = draw(st.integers(1, min(3 * s1, 600)))
    return rows, cols, unit


bounds = st.sampled_from([1e-3, 1.0, 4.0])
seeds = st.integers(0, 2**31 - 1)

LARGEST = (64, 64, None)      # exactly one full ciphertext
ONE_ROW = (1, SLOTS, None)    # s0 = 1, s1 = slots
SEVERAL = (130, 150, (64, 64))  # 3×3 blocks, both dims padded


def rand(shape: tuple[int, ...], bound: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1) * bound


def enc(t: torch.Tensor, ctx: et.SecretContext, unit: tuple[int, int] | None = None, **kw) -> et.EncTensor:
    return et.encrypt(t, ctx, unit=unit, **kw)


def assert_close(ctx: et.SecretContext, x: et.EncTensor, ref: torch.Tensor, *, magnitude: float,
                 keyswitches: int = 0, depth: int = 0) -> None:
    got = ctx.decrypt(x)
    assert got.dtype == torch.float64 and got.shape == ref.shape
    if ctx.backend_name == "plain":
        tol = 1e-10 * max(magnitude, 1.0)
    else:
        tol = ckks_tolerance(ctx.params, magnitude=magnitude, keyswitches=keyswitches, depth=depth)
    err = (got - ref).abs().max().item()
    assert err <= tol, f"max error {err:.3g} > tolerance {tol:.3g}"


# --- elementwise ops ----------------------------------------------------------------------------
# name -> (encrypted fn, torch fn, depth, key switches, magnitude from the bound B)
BINARY = {
    "add": (lambda a, b: a + b, lambda a, b: a + b, 0, 0, lambda B: 2 * B),
    "sub": (lambda a, b: a - b, lambda a, b: a - b, 0, 0, lambda B: 2 * B),
    "mul": (lambda a, b: a * b, lambda a, b: a * b, 1, 1, lambda B: max(B, 1) ** 2),
    "add_then_mul": (lambda a, b: (a + b) * b, lambda a, b: (a + b) * b, 1, 1, lambda B: 2 * max(B, 1) ** 2),
    "mul_then_add": (lambda a, b: a * b + a, lambda a, b: a * b + a, 1, 1, lambda B: max(B, 1) ** 2 + B),
}


@pytest.mark.parametrize("op", sorted(BINARY))
@given(shape=shapes(), bound=bounds, seed=seeds)
@example(shape=LARGEST, bound=1.0, seed=0)
@example(shape=SEVERAL, bound=4.0, seed=1)
@example(shape=(3, 5, None), bound=0.0, seed=2)
def test_enc_enc(any_ctx, op, shape, bound, seed):
    fn, ref_fn, depth, ks, mag = BINARY[op]
    rows, cols, unit = shape
    a, b = rand((rows, cols), bound, seed), rand((rows, cols), bound, seed + 1)
    out = fn(enc(a, any_ctx, unit), enc(b, any_ctx, unit))
    assert isinstance(out, et.EncTensor) and out.shape == (rows, cols)
    assert out.level == TOP - depth
    assert_close(any_ctx, out, ref_fn(a, b), magnitude=mag(bound), keyswitches=ks, depth=depth)


# Plaintext operands: (encrypted fn, torch fn, depth, magnitude); ``p`` is a tensor of the shape
# named by the case, ``s`` a Python scalar.
PLAIN = {
    "add": (lambda x, p: x + p, lambda x, p: x + p, 0),
    "radd": (lambda x, p: p + x, lambda x, p: p + x, 0),
    "sub": (lambda x, p: x - p, lambda x, p: x - p, 0),
    "rsub": (lambda x, p: p - x, lambda x, p: p - x, 0),
    "mul": (lambda x, p: x * p, lambda x, p: x * p, 1),
    "rmul": (lambda x, p: p * x, lambda x, p: p * x, 1),
    "neg": (lambda x, p: -x, lambda x, p: -x, 0),
}
OPERANDS = ["same", "row", "column", "vector", "0-d", "scalar", "numpy", "numpy-column"]


def _operand(kind: str, rows: int, cols: int, bound: float, seed: int) -> tuple[object, torch.Tensor]:
    """The operand as passed to the EncTensor op, and as a torch tensor for the reference."""
    shape = {"same": (rows, cols), "row": (1, cols), "column": (rows, 1), "vector": (cols,),
             "0-d": (), "scalar": (), "numpy": (rows, cols), "numpy-column": (rows, 1)}[kind]
    t = rand(shape, max(bound, 0.5), seed)
    if kind == "scalar":
        return float(t), t
    if kind.startswith("numpy"):
        return t.numpy(), t
    return t, t


@pytest.mark.parametrize("op", sorted(PLAIN))
@given(shape=shapes(), bound=bounds, seed=seeds, kind=st.sampled_from(OPERANDS))
@example(shape=ONE_ROW, bound=1.0, seed=3, kind="row")
@example(shape=SEVERAL, bound=1.0, seed=4, kind="column")
@example(shape=LARGEST, bound=4.0, seed=5, kind="scalar")
def test_enc_plain_broadcasting(any_ctx, op, shape, bound, seed, kind):
    fn, ref_fn, depth = PLAIN[op]
    rows, cols, unit = shape
    x = rand((rows, cols), bound, seed)
    p, p_ref = _operand(kind, rows, cols, bound, seed + 1)
    out = fn(enc(x, any_ctx, unit), p)
    assert isinstance(out, et.EncTensor) and out.shape == (rows, cols)
    assert out.level == TOP - depth
    mag = 2 * max(bound, 0.5) * max(bound, 1)
    assert_close(any_ctx, out, ref_fn(x, p_ref), magnitude=mag, depth=depth)


@given(shape=shapes(), bound=bounds, seed=seeds, divisor=st.sampled_from([2, -4.0, 0.3, 7]))
@example(shape=SEVERAL, bound=4.0, seed=6, divisor=0.3)
def test_scalar_division_and_chains(any_ctx, shape, bound, seed, divisor):
    rows, cols, unit = shape
    x = rand((rows, cols), bound, seed)
    out = (1.5 - enc(x, any_ctx, unit) / divisor) * 2
    assert out.level == TOP - 2
    assert_close(any_ctx, out, (1.5 - x / divisor) * 2, magnitude=4 * max(bound, 1) / min(abs(divisor), 1),
                 depth=2)


def test_ops_on_different_levels_align(any_ctx):
    x, y = rand((5, 7), 1.0, 7), rand((5, 7), 1.0, 8)
    a, b = enc(x, any_ctx), enc(y, any_ctx)
    lower = a * b                  # level TOP-1, scale Δ²/q
    with et.count_ops() as ops:
        out = lower + b            # b goes down with a scale fix: no level beyond lower's
    assert out.level == TOP - 1 and ops.scale_alignments == 1
    with et.count_ops() as ops:
        out = out - a.mod_switch_to(TOP - 1)  # same level, scales Δ²/q vs Δ: both lose one
    assert out.level == TOP - 2 and ops.scale_alignments == 1
    assert_close(any_ctx, out, x * y + y - x, magnitude=3, keyswitches=1, depth=2)
    with et.count_ops() as ops:
        (a + b).mod_switch_to(0)
    assert ops.mod_switches == 1 and ops.additions == 1


# --- sums --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dim", [0, 1, -1, -2, None])
@given(shape=shapes(), bound=bounds, seed=seeds)
@example(shape=LARGEST, bound=1.0, seed=9)
@example(shape=ONE_ROW, bound=1.0, seed=10)
@example(shape=SEVERAL, bound=4.0, seed=11)
@example(shape=(1, 1, None), bound=1.0, seed=12)
def test_sum(any_ctx, dim, shape, bound, seed):
    rows, cols, unit = shape
    x = rand((rows, cols), bound, seed)
    ex = enc(x, any_ctx, unit)
    s0, s1 = ex.layout.unit
    with et.count_ops() as ops:
        out = ex.sum(dim)
    n_a, n_b = ex.layout.grid
    d = None if dim is None else dim % 2
    rot_rows, rot_cols = int(math.log2(s0)), int(math.log2(s1))
    if d == 1:
        ref, rotations, levels = x.sum(1, keepdim=True), n_a * rot_cols, 1
    elif d == 0:
        ref, rotations, levels = x.sum(0, keepdim=True), n_b * rot_rows, 1
    else:
        ref, rotations, levels = x.sum().reshape(1, 1), n_b * rot_rows + rot_cols, 2
    assert out.shape == ref.shape and out.layout.unit == (s0, s1)
    assert out.level == TOP - levels
    assert ops.rotations == rotations and ops.scale_alignments == 0
    terms = rows * cols if d is None else (rows if d == 0 else cols)
    assert_close(any_ctx, out, ref, magnitude=terms * bound, keyswitches=rot_rows + rot_cols,
                 depth=levels)


@given(shape=shapes(), bound=bounds, seed=seeds)
@example(shape=SEVERAL, bound=1.0, seed=13)
def test_mean(any_ctx, shape, bound, seed):
    rows, cols, unit = shape
    x = rand((rows, cols), bound, seed)
    ex = enc(x, any_ctx, unit)
    s0, s1 = ex.layout.unit
    ks = int(math.log2(s0 * s1))
    assert_close(any_ctx, ex.mean(0), x.mean(0, keepdim=True), magnitude=bound, keyswitches=ks, depth=2)
    assert_close(any_ctx, ex.mean(1), x.mean(1, keepdim=True), magnitude=bound, keyswitches=ks, depth=2)


def test_sum_keeps_padding_zero(any_ctx):
    """A sum's result holds zeros at every padding slot, so it can feed further sums."""
    x = rand((5, 6), 1.0, 14)
    out = enc(x, any_ctx).sum(1)
    slots = np.stack([any_ctx.decrypt_vector(c).real for c in out.ciphers()])
    pad = 1 - out.layout.valid_mask().reshape(slots.shape)
    tol = 1e-12 if any_ctx.backend_name == "plain" else ckks_tolerance(PARAMS, keyswitches=12, depth=1)
    assert np.abs(slots * pad).max() <= tol
    assert_close(any_ctx, out.sum(0), x.sum().reshape(1, 1), magnitude=30, keyswitches=12, depth=2)


# --- autograd through EncTensor ops --------------------------------------------------------------
@given(shape=shapes(), seed=seeds)
@example(shape=SEVERAL, seed=15)
def test_backward_matches_torch(any_ctx, shape, seed):
    rows, cols, unit = shape
    x, z, w = rand((rows, cols), 1.0, seed), rand((rows, cols), 1.0, seed + 1), rand((1, cols), 1.0, seed + 2)
    g = rand((rows, 1), 1.0, seed + 3)
    ex, ez = enc(x, any_ctx, unit, requires_grad=True), enc(z, any_ctx, unit, requires_grad=True)
    # Both sums land on Δ at the same level (their masks fix the scale), so nothing is wasted.
    y = (ex * ez).sum(1) - (ex * w).sum(1) + 2.0
    y.backward(enc(g, any_ctx, ex.layout.unit))
    tx, tz = x.clone().requires_grad_(), z.clone().requires_grad_()
    ((tx * tz).sum(1, keepdim=True) - (tx * w).sum(1, keepdim=True) + 2.0).backward(g)
    assert ex.grad is not None and ez.grad is not None
    assert_close(any_ctx, ex.grad, tx.grad, magnitude=4, keyswitches=14, depth=3)
    assert_close(any_ctx, ez.grad, tz.grad, magnitude=2, keyswitches=14, depth=3)


# --- layouts -------------------------------------------------------------------------------------
@st.composite
def layouts(draw: st.DrawFn) -> BlockLayout:
    tiling = draw(st.sampled_from(["grid", "vertical", "horizontal"]))
    slots = draw(st.sampled_from([64, 256, 4096]))
    if tiling == "grid":
        s0 = 2 ** draw(st.integers(0, int(math.log2(slots))))
        shape = (draw(st.integers(1, 3 * s0)), draw(st.integers(1, 3 * (slots // s0))))
        return BlockLayout(shape, (s0, slots // s0), "grid")
    classes = draw(st.integers(1, int(math.sqrt(slots))))
    other = draw(st.integers(1, 2 * slots))
    if tiling == "vertical":  # weights: classes × features
        return BlockLayout((classes, other), unit_shape(1, classes, slots), "vertical")
    return BlockLayout((other, classes), unit_shape(other, classes, slots), "horizontal")


@given(layout=layouts(), seed=seeds)
@example(layout=BlockLayout((64, 64), (64, 64)), seed=0)
@example(layout=BlockLayout((16, 769), (16, 256), "vertical"), seed=0)
@example(layout=BlockLayout((1024, 10), (512, 16), "horizontal"), seed=0)
@example(layout=BlockLayout((1, 1), (1, 64), "vertical"), seed=0)
def test_pack_unpack_round_trip(layout, seed):
    m = np.random.default_rng(seed).uniform(-1, 1, layout.shape)
    packed = layout.pack(m)
    n_a, n_b = layout.grid
    assert packed.shape == (n_a, n_b, layout.slots)
    np.testing.assert_array_equal(layout.unpack(packed), m)
    mask = layout.valid_mask()
    assert set(np.unique(mask)) <= {0.0, 1.0}
    assert not np.any(packed * (1 - mask))  # padding is zero
    s0, s1 = layout.unit
    rows, cols = layout.shape
    r, t = rows - 1, cols - 1  # the last entry: where HETAL.md §2 says it sits
    if layout.tiling == "grid":
        assert packed[r // s0, t // s1, (r % s0) * s1 + t % s1] == m[r, t]
        assert mask.sum() == rows * cols
    elif layout.tiling == "vertical":
        c_pad = next_pow2(rows)
        for k in range(s0 // c_pad):  # rows repeat down the block
            assert packed[0, t // s1, (k * c_pad + r) * s1 + t % s1] == m[r, t]
        assert mask.sum() == rows * cols * (s0 // c_pad)
    else:
        c_pad = next_pow2(cols)
        for k in range(s1 // c_pad):  # classes repeat along the row
            assert packed[r // s0, 0, (r % s0) * s1 + k * c_pad + t] == m[r, t]
        assert mask.sum() == rows * cols * (s1 // c_pad)


@pytest.mark.parametrize("tiling", ["vertical", "horizontal"])
@given(seed=seeds, classes=st.integers(1, 16), other=st.integers(1, 300), bound=bounds)
@example(seed=0, classes=16, other=300, bound=1.0)
def test_tiled_tensors_round_trip_and_compute(any_ctx, tiling, seed, classes, other, bound):
    shape = (classes, other) if tiling == "vertical" else (other, classes)
    x, y = rand(shape, bound, seed), rand(shape, bound, seed + 1)
    ex = et.encrypt(x, any_ctx, tiling=tiling)
    assert ex.layout.tiling == tiling and ex.layout.c_pad == next_pow2(classes)
    out = ex * y - ex
    assert out.layout == ex.layout
    assert_close(any_ctx, out, x * y - x, magnitude=2 * max(bound, 1) ** 2, depth=1)
    with pytest.raises(et.ShapeError, match="grid"):
        ex.sum(0)


@pytest.mark.parametrize(("batch", "classes", "slots", "unit"), [
    (1024, 10, 16384, (1024, 16)), (2048, 10, 16384, (1024, 16)), (512, 3, 16384, (512, 32)),
    (1024, 7, 16384, (1024, 16)), (1024, 10, 8192, (512, 16)), (512, 3, 8192, (512, 16)),
    (1024, 7, 8192, (1024, 8)), (1, 1, 4096, (1, 4096)), (5000, 1, 4096, (4096, 1)),
])
def test_unit_shape_rule(batch, classes, slots, unit):
    """HETAL.md §2's table (SEAL columns)."""
    assert unit_shape(batch, classes, slots) == unit
    s0, s1 = unit
    assert s0 * s1 == slots and s1 >= next_pow2(classes) and s0 >= min(next_pow2(classes), s0)


# --- contracts -----------------------------------------------------------------------------------
def test_repr_never_shows_values(any_ctx):
    x = et.encrypt(torch.full((3, 5), 0.7777771), any_ctx, requires_grad=True)
    y = x * 3.25 + 0.6666661
    for t in (x, y, y.detach()):
        for text in (repr(t), str(t), f"{t}"):
            assert "7777" not in text and "6666" not in text and "3.25" not in text
            assert "shape=(3, 5)" in text and "level=" in text
    assert "grad_fn" in repr(y)


@pytest.mark.parametrize("call", [bool, float, int, lambda t: t.item(), lambda t: t.numpy(),
                                  lambda t: t.tolist(), lambda t: [0, 1][t], lambda t: 1 if t else 0])
def test_value_conversions_raise(plain_ctx, call):
    x = et.encrypt(torch.ones(2, 2), plain_ctx)
    with pytest.raises(TypeError, match="SecretContext"):
        call(x)


def test_metadata(any_ctx):
    x = et.encrypt(torch.ones(5, 7), any_ctx)
    assert x.shape == torch.Size([5, 7]) and x.size() == x.shape and x.size(1) == 7
    assert x.ndim == 2 and len(x) == 5 and x.level == TOP and x.is_leaf
    assert len(x.ciphers()) == 1 and x.ctx is any_ctx.public()
    one_d = et.encrypt(torch.arange(4.0), any_ctx)
    assert one_d.shape == (1, 4)
    np.testing.assert_allclose(any_ctx.decrypt(one_d).numpy(), [[0, 1, 2, 3]], atol=1e-6)


def test_enctensor_holds_only_a_public_context(any_ctx):
    x = et.encrypt(torch.ones(2, 2), any_ctx)  # a SecretContext is accepted, and only its public()
    assert isinstance(x.ctx, et.PublicContext)
    with pytest.raises(et.KeyRoleError):
        et.EncTensor(x.blocks, x.layout, any_ctx)


SHAPE_ERROR_CASES = [
    "3-D tensor", "NaN", "different shapes", "different layouts", "enc + tiled", "not broadcastable",
    "3-D operand", "inf operand", "sum dim 2", "unit of other slots", "layout shape", "too many classes",
    "backward without grad", "backward wrong shape",
]


def _shape_errors(ctx: et.SecretContext) -> dict[str, object]:
    x = et.encrypt(torch.ones(3, 4), ctx)
    return {
        "3-D tensor": lambda: et.encrypt(torch.ones(2, 3, 4), ctx),
        "NaN": lambda: et.encrypt(torch.tensor([[1.0, float("nan")]]), ctx),
        "different shapes": lambda: x + et.encrypt(torch.ones(3, 5), ctx),
        "different layouts": lambda: x * et.encrypt(torch.ones(3, 4), ctx, unit=(64, 64)),
        "enc + tiled": lambda: x - et.encrypt(torch.ones(3, 4), ctx, tiling="horizontal"),
        "not broadcastable": lambda: x + torch.ones(2, 4),
        "3-D operand": lambda: x * torch.ones(1, 3, 4),
        "inf operand": lambda: x * torch.tensor(float("inf")),
        "sum dim 2": lambda: x.sum(2),
        "unit of other slots": lambda: et.encrypt(torch.ones(3, 4), ctx, unit=(4, 4)),
        "layout shape": lambda: et.encrypt(torch.ones(3, 4), ctx, layout=BlockLayout((4, 4), (4, 1024))),
        "too many classes": lambda: et.encrypt(torch.ones(2, 100), ctx, tiling="horizontal"),
        "backward without grad": lambda: x.backward(),
        "backward wrong shape": lambda: x.backward(et.encrypt(torch.ones(1, 4), ctx)),
    }


@pytest.mark.parametrize("case", SHAPE_ERROR_CASES)
def test_shape_errors(plain_ctx, case):
    with pytest.raises(et.ShapeError):
        _shape_errors(plain_ctx)[case]()


@pytest.mark.parametrize("kwargs", [
    {"shape": (0, 3), "unit": (4, 4)}, {"shape": (3, 3), "unit": (3, 4)}, {"shape": (3, 3), "unit": (0, 4)},
    {"shape": (3, 3), "unit": (4, 4), "tiling": "diagonal"},
    {"shape": (9, 3), "unit": (8, 2), "tiling": "vertical"},
    {"shape": (3, 9), "unit": (2, 8), "tiling": "horizontal"},
])
def test_invalid_layouts(kwargs):
    with pytest.raises(et.ShapeError):
        BlockLayout(**kwargs)


def test_pack_and_unpack_check_shapes():
    layout = BlockLayout((3, 4), (4, 4))
    with pytest.raises(et.ShapeError):
        layout.pack(np.ones((4, 3)))
    with pytest.raises(et.ShapeError):
        layout.unpack(np.ones((1, 1, 8)))
    with pytest.raises(et.ShapeError):
        unit_shape(1, 65, 4096)  # c_pad² = 16384 > 4096


def test_tensors_of_other_keys_do_not_mix(plain_ctx):
    other = et.SecretContext.create("test", backend="plain")
    x, y = et.encrypt(torch.ones(2, 2), plain_ctx), et.encrypt(torch.ones(2, 2), other)
    with pytest.raises(et.ContextMismatchError):
        x + y
    with pytest.raises(et.ContextMismatchError):
        other.decrypt(x)


def test_division_by_an_enctensor_is_refused(plain_ctx):
    x = et.encrypt(torch.ones(2, 2), plain_ctx)
    with pytest.raises(TypeError, match="approximate inverse"):
        x / x
