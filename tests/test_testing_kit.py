"""The testing kit (encrypted_torch.testing): assert_close's tolerances, the strategies, the pytest plugin."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import encrypted_torch as et
from encrypted_torch.ckks.noise import ckks_tolerance
from encrypted_torch.functional import SoftmaxConfig
from encrypted_torch.testing import assert_close, secret_context, tolerance
from encrypted_torch.testing.strategies import contexts, enc_tensors, logits, shapes, values

PARAMS = et.PRESETS["test"]


def _pair(ctx: et.SecretContext, shape=(6, 9), seed=0) -> tuple[torch.Tensor, et.EncTensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1
    return a, et.encrypt(a, ctx)


def test_tolerance_formula():
    """The documented formula: ckks_tolerance with depth = levels consumed and keyswitches = depth +
    2·log2(slots) + 6 on SEAL; float64 rounding on the plaintext backend."""
    tol = tolerance(PARAMS, "seal", level=1, magnitude=3.0)
    assert tol.atol == ckks_tolerance(PARAMS, magnitude=3.0, depth=2, keyswitches=2 + 2 * 12 + 6) and tol.rtol == 0
    assert "depth=2" in tol.source and "keyswitches=32" in tol.source
    assert tolerance(PARAMS, "seal", level=3, keyswitches=0).atol == ckks_tolerance(PARAMS)
    assert tolerance(PARAMS, "plain", level=0, magnitude=0.5).atol == 1e-10


def test_assert_close_passes_on_matching_results(any_ctx):
    a, x = _pair(any_ctx)
    b, y = _pair(any_ctx, seed=1)
    assert_close(x * y + x, a * b + a, secret=any_ctx)
    assert_close(x.sum(dim=1), a.sum(dim=1, keepdim=True), secret=any_ctx)
    got = any_ctx.decrypt(x)
    assert_close(got, got.clone())  # plain tensors on both sides: float64 rounding


@pytest.mark.parametrize("backend", ["plain", "seal"])
def test_assert_close_fails_beyond_the_tolerance(backend, plain_ctx, seal_ctx):
    ctx = plain_ctx if backend == "plain" else seal_ctx
    a, x = _pair(ctx)
    out = x * x
    tol = tolerance(PARAMS, backend, level=out.level, magnitude=float((a * a).abs().max()))
    wrong = (a * a).clone()
    wrong[2, 3] += 4 * tol.atol
    with pytest.raises(AssertionError) as err:
        assert_close(out, wrong, secret=ctx)
    text = str(err.value)
    assert "Mismatched elements: 1 / 54" in text and "at index (2, 3)" in text
    assert ("ckks_tolerance" if backend == "seal" else "float64 rounding") in text
    assert_close(out, wrong, secret=ctx, atol=8 * tol.atol, rtol=0)  # an explicit tolerance wins


def test_assert_close_on_the_plaintext_backend_is_float64_exact(plain_ctx):
    a, x = _pair(plain_ctx)
    with pytest.raises(AssertionError, match="float64 rounding"):
        assert_close(x, a + 1e-9, secret=plain_ctx)


def test_assert_close_contracts(seal_ctx):
    a, x = _pair(seal_ctx)
    with pytest.raises(AssertionError, match="'shape' do not match"):
        assert_close(x, a[:, :3], secret=seal_ctx)
    with pytest.raises(ValueError, match="both atol and rtol"):
        assert_close(x, a, secret=seal_ctx, atol=1e-3)
    other = et.SecretContext.create("test", backend="plain")
    with pytest.raises(TypeError, match="pass secret="):
        assert_close(et.encrypt(a, other), a)
    assert_close(x, a)  # the kit's own keys are found by fingerprint


@given(shape=shapes(PARAMS, max_blocks=2, max_rows=PARAMS.slots, max_cols=PARAMS.slots))
def test_shapes_fit_the_slots(shape):
    rows, cols = shape
    s0, s1 = et.unit_shape(rows, 1, PARAMS.slots)
    assert 1 <= rows <= PARAMS.slots and 1 <= cols <= 2 * s1
    assert -(-cols // s1) * -(-rows // s0) <= 2


@given(t=logits(SoftmaxConfig.narrow()))
def test_logits_are_inside_the_softmax_domain(t):
    assert t.dtype == torch.float64 and t.ndim == 2 and 2 <= t.shape[1] <= 10
    assert bool(t.abs().max() <= 4.0) and bool(torch.isfinite(t).all())


@given(t=values((3, 4), bound=0.5))
def test_values_are_bounded(t):
    assert t.shape == (3, 4) and bool(t.abs().max() <= 0.5)


@given(pair=enc_tensors(bound=2.0, max_rows=16, max_cols=16))
def test_enc_tensors_on_both_backends(pair):
    a, x = pair
    assert isinstance(x, et.EncTensor) and x.shape == a.shape and x.level == PARAMS.levels
    assert x.ctx.backend_name in ("plain", "seal") and bool(a.abs().max() <= 2.0)
    assert_close(x * 3.0 - x, 2 * a)  # decrypts with the kit's key, tolerance from the levels used


@given(data=st.data())
def test_strategies_with_a_fixture_context(any_ctx, data):
    a, x = data.draw(enc_tensors(any_ctx, shape=(4, 5)))
    assert x.ctx.fingerprint == any_ctx.fingerprint
    assert_close(x, a, secret=any_ctx)


@given(ctx=contexts(backends=("plain",)))
def test_contexts_are_made_once(ctx):
    assert ctx is secret_context("test", "plain") and ctx.backend_name == "plain"
    assert secret_context("test", "seal") is secret_context("test", "seal")
    with pytest.raises(ValueError, match="unknown backend"):
        secret_context("test", "gpu")


def test_suite_fixtures_are_the_plugins(plain_ctx, seal_ctx, et_plain_ctx, et_seal_ctx):
    assert plain_ctx is et_plain_ctx is secret_context("test", "plain")
    assert seal_ctx is et_seal_ctx is secret_context("test", "seal")


USER_TEST = textwrap.dedent("""
    import torch
    from hypothesis import given, settings
    import encrypted_torch as et
    from encrypted_torch.testing import assert_close
    from encrypted_torch.testing.strategies import enc_tensors

    def test_fixture(et_any_ctx):
        a = torch.ones(2, 3, dtype=torch.float64)
        assert_close(et.encrypt(a, et_any_ctx) * 2, 2 * a, secret=et_any_ctx)

    @settings(max_examples=3, deadline=None)
    @given(pair=enc_tensors(max_rows=4, max_cols=4))
    def test_property(pair):
        a, x = pair
        assert_close(x + x, 2 * a)
""")


def test_plugin_fixtures_in_a_users_project(tmp_path):
    """A user's test file, outside this suite's conftest, gets the fixtures from the entry point."""
    (tmp_path / "test_user.py").write_text(USER_TEST)
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "3 passed" in run.stdout  # test_fixture[plain], test_fixture[seal], test_property
