"""Refresh (the key owner decrypts and re-encrypts at the top level) instead of bootstrapping.

HETAL.md §1: a refresh is the identity, it refreshes the smallest live set in one round trip,
and its count is reported.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch

import encrypted_torch as et
from encrypted_torch.ckks import Cipher, count_ops
from encrypted_torch.ckks.noise import ckks_tolerance
from encrypted_torch.refresh import ensure_levels

PARAMS = et.PRESETS["test"]
TOP = PARAMS.levels


class CountingRefresher:
    """Wraps a SecretContext and records each round trip."""

    def __init__(self, secret: et.SecretContext) -> None:
        self.secret, self.calls = secret, []

    def refresh(self, ciphers: Sequence[Cipher]) -> list[Cipher]:
        self.calls.append(len(ciphers))
        return self.secret.refresh(ciphers)


def _ciphers_at(ctx: et.SecretContext, levels: list[int], seed: int = 0) -> tuple[list[Cipher], list]:
    ev = ctx.public().evaluator
    rng = np.random.default_rng(seed)
    xs = [rng.uniform(-1, 1, ctx.slots) for _ in levels]
    out = []
    for x, level in zip(xs, levels, strict=True):
        c = ev.encrypt(x)
        while c.level > level:  # through real rescales, so the scales are not all Δ
            c = ev.mul_plain(c, 1.0, out_scale=PARAMS.scale * (1 + 1e-3 * c.level))
        out.append(c)
    return out, xs


def _tol(ctx: et.SecretContext, depth: int = 0) -> float:
    return 1e-12 if ctx.backend_name == "plain" else ckks_tolerance(ctx.params, depth=depth)


def test_no_refresher_raises_depth_error(any_ctx):
    assert et.current_refresher() is None
    ciphers, _ = _ciphers_at(any_ctx, [TOP, 0, 1])
    with count_ops() as ops, pytest.raises(et.DepthError) as err:
        ensure_levels(ciphers, 2, "matmul")
    assert (err.value.op, err.value.needed, err.value.left) == ("matmul", 2, 0)
    assert "matmul needs 2 level(s), 0 left" in str(err.value) and "refresh_with" in str(err.value)
    assert ops.refreshes == 0
    x = et.encrypt(torch.ones(2, 2), any_ctx).mod_switch_to(0)
    with pytest.raises(et.DepthError, match="refresh needs 3 level"):
        x.refresh()


def test_nothing_short_needs_no_refresher(any_ctx):
    ciphers, _ = _ciphers_at(any_ctx, [TOP, 2])
    out = ensure_levels(ciphers, 2, "op")
    assert out == ciphers and all(a is b for a, b in zip(out, ciphers, strict=True))
    assert out is not ciphers


def test_refresh_with_sets_and_restores(any_ctx):
    assert et.current_refresher() is None
    with et.refresh_with(any_ctx) as r:
        assert r is any_ctx and et.current_refresher() is any_ctx
        with et.refresh_with(None):
            assert et.current_refresher() is None
        assert et.current_refresher() is any_ctx
    assert et.current_refresher() is None
    with pytest.raises(RuntimeError), et.refresh_with(any_ctx):
        raise RuntimeError("boom")
    assert et.current_refresher() is None


@pytest.mark.parametrize("bad", [object(), "secret", 3])
def test_refresh_with_needs_a_refresher(bad):
    with pytest.raises(TypeError, match="refresh"), et.refresh_with(bad):
        pass


def test_the_server_cannot_refresh(any_ctx):
    with pytest.raises(TypeError), et.refresh_with(any_ctx.public()):
        pass


def test_refresh_touches_only_the_short_ciphers_in_one_round_trip(any_ctx):
    levels = [TOP, 0, 2, 1, 0, TOP]
    ciphers, xs = _ciphers_at(any_ctx, levels, seed=1)
    refresher = CountingRefresher(any_ctx)
    with count_ops() as ops, et.refresh_with(refresher):
        out = ensure_levels(ciphers, 2, "op")
    assert refresher.calls == [3]  # one round trip for the three short ones
    assert ops.refreshes == 3 and ops.encryptions == 3
    assert ops.rotations == ops.ct_pt_mults == ops.ct_ct_mults == 0
    for before, after, level in zip(ciphers, out, levels, strict=True):
        if level >= 2:
            assert after is before
        else:
            assert (after.level, after.scale) == (TOP, PARAMS.scale)
    for c, x in zip(out, xs, strict=True):
        assert np.max(np.abs(any_ctx.decrypt_vector(c).real - x)) <= _tol(any_ctx, depth=TOP)


@pytest.mark.parametrize("complex_", [False, True])
def test_refresh_is_the_identity(any_ctx, complex_):
    """Decrypt and re-encrypt, nothing else: the values are the ones the cipher held."""
    ev = any_ctx.public().evaluator
    rng = np.random.default_rng(2)
    x = rng.uniform(-3, 3, any_ctx.slots) + (1j * rng.uniform(-3, 3, any_ctx.slots) if complex_ else 0)
    c = ev.mul_plain(ev.mul_plain(ev.encrypt(x), 0.5), 2.0)  # level 1
    held = any_ctx.decrypt_vector(c)
    with count_ops() as ops:
        (fresh,) = any_ctx.refresh([c])
    assert ops.refreshes == 1 and ops.encryptions == 1
    assert (fresh.level, fresh.scale, fresh.context_id) == (TOP, PARAMS.scale, c.context_id)
    got = any_ctx.decrypt_vector(fresh)
    tol = 1e-12 if any_ctx.backend_name == "plain" else ckks_tolerance(PARAMS, magnitude=3)
    assert np.max(np.abs(got - held)) <= tol
    assert np.max(np.abs(got - x)) <= 3 * tol


def test_enctensor_refresh(any_ctx):
    g = torch.Generator().manual_seed(3)
    t = torch.rand(20, 600, generator=g, dtype=torch.float64)
    x = et.encrypt(t, any_ctx, unit=(8, 512), requires_grad=True)  # 3×2 blocks
    blocks = x.blocks
    blocks[1][0] = any_ctx.public().evaluator.mod_switch(blocks[1][0], 0)
    blocks[2][1] = any_ctx.public().evaluator.mod_switch(blocks[2][1], 1)
    blocks[0][1] = any_ctx.public().evaluator.mod_switch(blocks[0][1], 2)
    mixed = et.EncTensor(blocks, x.layout, x.ctx, requires_grad=True)
    assert mixed.level == 0
    refresher = CountingRefresher(any_ctx)
    with count_ops() as ops, et.refresh_with(refresher):
        partly = mixed.refresh(levels=2)
        full = mixed.refresh()
    assert refresher.calls == [2, 3]  # below 2: two blocks; below the top: three
    assert ops.refreshes == 5
    assert partly.blocks[0][0] is blocks[0][0] and partly.blocks[0][1] is blocks[0][1]
    assert full.blocks[1][1] is blocks[1][1]
    assert partly.level == 2 and full.level == TOP and full.requires_grad
    for y in (partly, full):
        assert y.layout == x.layout
        assert (any_ctx.decrypt(y) - t).abs().max() <= _tol(any_ctx, depth=1)


def test_refresh_that_stays_too_shallow(any_ctx):
    class Shallow:
        def refresh(self, ciphers):
            return list(ciphers)

    ciphers, _ = _ciphers_at(any_ctx, [0])
    with pytest.raises(et.DepthError, match="even a fresh ciphertext"), et.refresh_with(Shallow()):
        ensure_levels(ciphers, 1, "op")
    with pytest.raises(et.DepthError, match="deeper preset"), et.refresh_with(any_ctx):
        ensure_levels(ciphers, TOP + 1, "op")


def test_refresh_with_the_wrong_key(any_ctx):
    other = et.SecretContext.create("test", backend="plain")
    ciphers, _ = _ciphers_at(any_ctx, [0])
    with pytest.raises(et.ContextMismatchError), et.refresh_with(other):
        ensure_levels(ciphers, 1, "op")
