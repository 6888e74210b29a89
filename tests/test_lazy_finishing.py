"""One relinearization and one rescale per sum of products (#14): the Evaluator's raw products, the
polynomials, the softmax's sums and the matrix products' placement, with exact op counts.

Counts come from the Evaluator (every backend counts the same); values are checked on the plaintext
backend (exact) and on SEAL (within ``ckks_tolerance``), where every tracked level, scale and size
must also be SEAL's own.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import encrypted_torch as et
from encrypted_torch.approx.comparison import F3, G3
from encrypted_torch.approx.exp import P8
from encrypted_torch.approx.softmax import SoftmaxConfig
from encrypted_torch.ckks import Cipher, count_ops
from encrypted_torch.ckks.noise import ckks_tolerance
from encrypted_torch.functional.plan import plan_softmax
from encrypted_torch.linalg import counts, diag_abt, diag_abt_plain, diag_atb, diag_atb_plain, hetal_rotation_steps
from encrypted_torch.tensor.layout import next_pow2

PARAMS = et.PRESETS["test"]
SLOTS = PARAMS.slots
DELTA = PARAMS.scale


def rand(seed: int, bound: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-bound, bound, SLOTS)


def check(ctx: et.SecretContext, c: Cipher, expected: np.ndarray, *, magnitude: float = 1.0,
          keyswitches: int = 0, depth: int = 0) -> None:
    backend = ctx.public().backend
    if backend.name == "seal":  # the evaluator's books are SEAL's own, exactly
        assert (backend.level_of(c.handle), backend.scale_of(c.handle), backend.size_of(c.handle)) == \
            (c.level, c.scale, c.size)
    got = ctx.decrypt_vector(c).real
    if ctx.backend_name == "plain":
        tol = 1e-12 * max(magnitude, 1.0)
    else:
        tol = ckks_tolerance(ctx.params, magnitude=magnitude, keyswitches=keyswitches, depth=depth)
    err = float(np.max(np.abs(got - expected)))
    assert err <= tol, f"max error {err:.3g} > tolerance {tol:.3g}"


def _finishing(ops: et.OpCounts) -> dict[str, int]:
    return {k: getattr(ops, k) for k in ("ct_ct_mults", "ct_pt_mults", "relinearizations", "rescales")}


# --- the Evaluator's primitive -------------------------------------------------------------------------
def test_mul_plain_raw_is_mul_plain_before_its_rescale(any_ctx):
    ev = any_ctx.public().evaluator
    x, v = rand(1), rand(2)
    a = ev.encrypt(x)
    with count_ops() as ops:
        raw = ev.mul_plain_raw(a, v)
        out = ev.rescale(raw, DELTA)
    assert (ops.ct_pt_mults, ops.rescales) == (1, 1)
    assert (raw.level, raw.size) == (a.level, 2) and abs(raw.scale / (DELTA * ev.primes[a.level]) - 1) < 1e-12
    assert (out.level, out.scale) == (a.level - 1, DELTA)
    check(any_ctx, out, x * v, depth=1)


def test_sum_of_products_is_relinearized_and_rescaled_once(any_ctx):
    """x0·x1 + x2·x3 + v·x4 + w·x5: two ct·ct and two ct·pt products, added raw (SEAL adds a size-3
    and a size-2 ciphertext), then one relinearization and one rescale, where per product it was
    2 relinearizations and 4 rescales."""
    ev = any_ctx.public().evaluator
    xs = [rand(s) for s in range(6)]
    v, w = rand(10), rand(11)
    cs = [ev.encrypt(x) for x in xs]
    q = ev.primes[cs[0].level]
    with count_ops() as ops:
        raws = [ev.mul_raw(cs[0], cs[1]), ev.mul_raw(cs[2], cs[3]),
                ev.mul_plain_raw(cs[4], v, DELTA * DELTA / q), ev.mul_plain_raw(cs[5], w, DELTA * DELTA / q)]
        total = raws[0]
        for r in raws[1:]:
            total = ev.add(total, r)
        assert total.size == 3
        out = ev.finish(total, DELTA * DELTA / q)
    assert _finishing(ops) == {"ct_ct_mults": 2, "ct_pt_mults": 2, "relinearizations": 1, "rescales": 1}
    assert (out.size, out.level, out.scale) == (2, cs[0].level - 1, DELTA * DELTA / q)
    check(any_ctx, out, xs[0] * xs[1] + xs[2] * xs[3] + v * xs[4] + w * xs[5], magnitude=4,
          keyswitches=1, depth=1)


def test_a_raw_sum_is_never_rotated(any_ctx):
    """SEAL rotates size-2 ciphertexts only: a size-3 sum is relinearized first (and counted)."""
    ev = any_ctx.public().evaluator
    x, y = rand(20), rand(21)
    raw = ev.add(ev.mul_raw(ev.encrypt(x), ev.encrypt(y)), ev.mul_raw(ev.encrypt(y), ev.encrypt(x)))
    with count_ops() as ops:
        r = ev.rotate(raw, 1)
    assert ops.relinearizations == 1 and r.size == 2
    check(any_ctx, ev.rescale(r), np.roll(2 * x * y, -1), magnitude=2, keyswitches=2, depth=1)


# --- polynomials -----------------------------------------------------------------------------------------
# Per node p = A + x^m·B, the products landing on one (level, scale) share one relinearization and one
# rescale. Odd degree 7 (CKK's f3, g3): x², x⁴ (2 squarings), c7·x (B's inner term), B = c5·x + x²·(c7·x),
# c3·x, A + x⁴·B = c1·x + x²·(c3·x) + x⁴·B: 5 ct·ct, 4 ct·pt, 4 relinearizations (per product 5) and
# 6 rescales (per product 9). Degree 8 with every coefficient (p8): x², x⁴, x⁸, c7·x, c3·x, then
# B' = c5·x + x²·(c6 + c7·x), B'' sums, and the top c1·x + x²·(c2 + c3·x) + x⁴·(c4 + B') + c8·x⁸:
# 6 ct·ct, 5 ct·pt, 5 relinearizations (per product 6) and 7 rescales (per product 11).
POLY_COUNTS = {
    "g3": {"ct_ct_mults": 5, "ct_pt_mults": 4, "relinearizations": 4, "rescales": 6},
    "f3": {"ct_ct_mults": 5, "ct_pt_mults": 4, "relinearizations": 4, "rescales": 6},
    "p8": {"ct_ct_mults": 6, "ct_pt_mults": 5, "relinearizations": 5, "rescales": 7},
}


@pytest.mark.parametrize("poly", [G3, F3], ids=lambda p: p.name)
def test_polynomial_relinearizes_once_per_sum(any_ctx, poly):
    """Degree 7 in the 'test' preset's 3 levels (p8 needs 4: counted on 'fast' below)."""
    ev = any_ctx.public().evaluator
    x = rand(30, 0.9)
    c = ev.encrypt(x)
    with count_ops() as ops:
        out = poly.evaluate(ev, c)
    assert _finishing(ops) == POLY_COUNTS[poly.name]
    assert ops.scale_alignments == 0
    assert (out.level, out.scale) == (c.level - poly.depth, c.scale)
    check(any_ctx, out, poly(x), magnitude=float(np.max(np.abs(poly(x)))) + 1,
          keyswitches=POLY_COUNTS[poly.name]["relinearizations"], depth=poly.depth)


@pytest.mark.parametrize("poly", [G3, P8], ids=lambda p: p.name)
def test_polynomial_counts_on_the_fast_preset(poly):
    """The same counts at N=16384 with 7 levels, where p8 fits (dry run: counts only)."""
    from encrypted_torch.ckks.null_backend import null_context

    ev = null_context(et.PRESETS["fast"]).evaluator
    with count_ops() as ops:
        poly.evaluate(ev, ev.encrypt(0.0))
    assert _finishing(ops) == POLY_COUNTS[poly.name]


def test_softmax_plan_counts():
    """HETAL's softmax per block row, c = 10 (4 tournament rounds of g3, g3, f3 and one update each,
    5 cubic extension stages, q8, 3 squarings, the row sum, 11 inverse rounds): one relinearization
    fewer per degree-7 polynomial and per q8 (3·4 + 1 = 13), rescales 3 fewer per degree-7
    polynomial, 1 per update, 1 per cubic stage but the last (its x term is free), 4 for q8 and 1 for
    the row sum (36 + 4 + 4 + 4 + 1 = 49). Levels and refreshes do not change."""
    n = 4  # (1024, 10) in (256, 32) blocks: 4 block rows
    plan = plan_softmax(SoftmaxConfig(), (1024, 10), "fast", unit=(256, 32))
    ops = plan.ops
    assert ops["relinearizations"] == ops["ct_ct_mults"] - n * 13 == 372
    assert ops["rescales"] == ops["ct_ct_mults"] + ops["ct_pt_mults"] - n * 49 == 508
    assert (plan.depth, plan.refreshes) == (72, 44)


# --- the matrix products ------------------------------------------------------------------------------
SHAPES = [(128, 128, 4, (128, 64)), (40, 17, 1, (64, 128)), (40, 17, 2, (64, 128)), (300, 70, 10, (64, 128)),
          (1100, 50, 7, (1024, 8))]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matmul_finishing_matches_the_closed_form(shape):
    """Relinearizations and rescales of DiagABT and DiagATB (each variant) are counts.py's formulas,
    and the results still equal torch's (exact slots)."""
    a, f, c, unit = shape
    steps = hetal_rotation_steps(unit, next_pow2(c), imag="auto", softmax=False)
    ctx = et.SecretContext.create("fast", rotations=steps, backend="plain")
    rng = np.random.default_rng(0)
    x_np, w_np, g_np = rng.normal(size=(a, f)), rng.normal(size=(c, f)), rng.normal(size=(a, c))
    x = et.encrypt(torch.from_numpy(x_np), ctx, unit=unit)
    w = et.encrypt(torch.from_numpy(w_np), ctx, unit=unit, tiling="vertical")
    g = et.encrypt(torch.from_numpy(g_np), ctx, unit=unit, tiling="horizontal")
    runs = {
        "abt_const": (lambda: diag_abt(x, w, imag="const", out_level=0),
                      counts.diag_abt_finishing(a, f, c, unit, "const"), x_np @ w_np.T),
        "abt_real": (lambda: diag_abt(x, w, imag="real", out_level=0),
                     counts.diag_abt_finishing(a, f, c, unit, "real"), x_np @ w_np.T),
        "abt_plain": (lambda: diag_abt_plain(x, w_np), counts.diag_abt_finishing(a, f, c, unit, "plain"),
                      x_np @ w_np.T),
        "mask_a": (lambda: diag_atb(g, x, variant="mask_a", out_level=0),
                   counts.diag_atb_finishing(a, f, c, unit, "mask_a"), g_np.T @ x_np),
        "prot_up": (lambda: diag_atb(g, x, variant="prot_up", out_level=0),
                    counts.diag_atb_finishing(a, f, c, unit, "prot_up"), g_np.T @ x_np),
        "atb_plain": (lambda: diag_atb_plain(g, x_np), counts.diag_atb_finishing(a, f, c, unit, "plain"),
                      g_np.T @ x_np),
    }
    for name, (fn, expect, want) in runs.items():
        with count_ops() as ops:
            out = fn()
        assert counts.Finishing(ops.relinearizations, ops.rescales) == expect, (name, shape)
        assert ops.scale_alignments == 0, name
        np.testing.assert_allclose(np.asarray(ctx.decrypt(out)), want, atol=1e-9, err_msg=name)


def test_placement_saves_the_rescales_it_says():
    """At the training shape (1024, 769, 10) in (256, 32) blocks: DiagABT 28 rescales fewer
    ((h − 1)·n_a, h = 8, n_a = 4), DiagATB 700 ((h − 1)·P·n_b, P = 4 window pieces, n_b = 25) than
    one per placed term."""
    a, f, c, unit = 1024, 769, 10, (256, 32)
    z = counts.sizes(a, f, c, unit)
    p = counts.window_pieces(z)
    per_product_abt = z.n_b + 3 * z.h * z.n_a
    per_product_atb = 2 * z.n_a + (z.h - 1) * z.n_a + z.h * z.n_b + p * z.h * z.n_b
    assert per_product_abt - counts.diag_abt_finishing(a, f, c, unit).rescale == 28
    assert per_product_atb - counts.diag_atb_finishing(a, f, c, unit).rescale == 700
    assert counts.diag_abt_finishing(a, f, c, unit).relin == 32
    assert counts.diag_atb_finishing(a, f, c, unit).relin == 200


@pytest.mark.parametrize("c_pad,pieces", [(1, 1), (2, 1), (4, 2), (8, 2), (16, 4), (32, 4)])
def test_window_split(c_pad, pieces):
    """DiagATB's window fold in P pieces: h·n_b·e rotations fewer per step, n_b·(P − 1) more to join
    the pieces, (P − 1)·h·n_b more CMults (masks rotated in the clear). (1024, 769, 10): 1,530 → 1,205
    rotations per training step (900 → 575 in DiagATB's row fold)."""
    unit = (256, 32)
    z = counts.sizes(1024, 769, c_pad, unit)
    assert counts.window_pieces(z) == pieces
    e = pieces.bit_length() - 1
    log_c = c_pad.bit_length() - 1
    unsplit = z.h * z.n_b * log_c + z.n_b * (z.log_s0 - log_c)
    assert unsplit - counts.fold_rotations(z) == z.h * z.n_b * e - z.n_b * (pieces - 1)
    if c_pad == 16:
        assert (unsplit, counts.fold_rotations(z)) == (900, 575)
