"""Optimizers: the encrypted update rules against torch.optim over several steps."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import encrypted_torch as et
from encrypted_torch import optim
from encrypted_torch.ckks.noise import ckks_tolerance
from encrypted_torch.nn import Parameter
from encrypted_torch.optim import NAG, SGD
from encrypted_torch.optim.functional import nag_gammas


def _run_both(ctx, make_torch_opt, make_enc_opt, grads, shape):
    w0 = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    tw = torch.nn.Parameter(w0.clone())
    topt = make_torch_opt([tw])
    ew = Parameter(et.encrypt(w0, ctx))
    eopt = make_enc_opt([ew])
    with et.refresh_with(ctx):
        for g in grads:
            tw.grad = g.clone()
            topt.step()
            ew.grad = et.encrypt(g, ctx)
            eopt.step()
    return tw.detach(), ctx.decrypt(ew)


SGD_CONFIGS = [
    dict(lr=0.5),
    dict(lr=0.1, momentum=0.9),
    dict(lr=0.1, momentum=0.9, nesterov=True),
    dict(lr=0.2, momentum=0.5, dampening=0.1, weight_decay=0.01),
]


@pytest.mark.parametrize("cfg", SGD_CONFIGS, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_sgd_matches_torch_exactly_on_plain_backend(plain_ctx, cfg):
    grads = [torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(s))
             for s in range(5)]
    ref, got = _run_both(plain_ctx, lambda p: torch.optim.SGD(p, **cfg), lambda p: SGD(p, **cfg), grads, (3, 5))
    assert torch.allclose(got, ref, atol=1e-9, rtol=0)


@given(st.sampled_from(SGD_CONFIGS), st.integers(2, 4))
def test_sgd_matches_torch_within_ckks_tolerance(seal_ctx, cfg, steps):
    grads = [torch.rand(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(s)) - 0.5
             for s in range(steps)]
    ref, got = _run_both(seal_ctx, lambda p: torch.optim.SGD(p, **cfg), lambda p: SGD(p, **cfg), grads, (4, 6))
    # each step: a handful of fresh encryptions and scalar products, refreshed when out of levels
    assert (got - ref).abs().max() <= ckks_tolerance(seal_ctx.params, magnitude=4, depth=3 * steps)


def test_sgd_refreshes_buffers_only_when_out_of_levels(seal_ctx):
    w = Parameter(et.encrypt(torch.zeros(2, 2), seal_ctx))
    opt = SGD([w], lr=0.1, momentum=0.9)
    levels = []
    with et.refresh_with(seal_ctx), et.count_ops() as ops:
        for _ in range(6):
            w.grad = et.encrypt(torch.ones(2, 2), seal_ctx)
            opt.step()
            levels.append((w.level, opt.state[w]["momentum_buffer"].level))
    # 3 levels: each step costs the buffer one level and the parameter at most one (its update is
    # a sum of one-level terms), so the buffer runs out in the fifth step and is refreshed then
    assert levels[:4] == [(2, 3), (2, 2), (1, 1), (0, 0)]
    assert levels[4:] == [(0, 2), (0, 1)]  # the parameter needs no level to be updated
    assert ops.refreshes == 1  # the buffer's one ciphertext, once, though the step uses it twice
    with pytest.raises(et.DepthError, match="level"):
        for _ in range(4):
            w.grad = et.encrypt(torch.ones(2, 2), seal_ctx)
            opt.step()


def test_nag_gammas_follow_the_recurrence():
    g = nag_gammas(4)
    assert g[0] == 0.0 and all(x < 0 for x in g[1:])
    golden = (1 + 5**0.5) / 2  # λ_2
    lam3 = (1 + (1 + 4 * golden**2) ** 0.5) / 2
    assert g[1] == pytest.approx((1 - golden) / lam3, abs=1e-12)


def test_nag_matches_its_formula_on_plain_backend(plain_ctx):
    lr, steps = 0.3, 4
    grads = [torch.randn(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(s))
             for s in range(steps)]
    w = torch.randn(2, 3, dtype=torch.float64)
    ew = Parameter(et.encrypt(w, plain_ctx))
    opt = NAG([ew], lr=lr)
    v_prev = None
    with et.refresh_with(plain_ctx):
        for t, g in enumerate(grads):
            gamma = nag_gammas(t + 1)[-1]
            v = w - lr * g
            w = v if v_prev is None else (1 - gamma) * v + gamma * v_prev
            v_prev = v
            ew.grad = et.encrypt(g, plain_ctx)
            opt.step()
    assert torch.allclose(plain_ctx.decrypt(ew), w, atol=1e-9)


def test_optimizer_rejects_plain_tensors_and_bad_lr(plain_ctx):
    with pytest.raises(TypeError, match="encrypted Parameters"):
        SGD([torch.zeros(2)], lr=0.1)
    p = Parameter(et.encrypt(torch.zeros(1, 2), plain_ctx))
    with pytest.raises(ValueError, match="learning rate"):
        SGD([p], lr=0)
    with pytest.raises(ValueError, match="Nesterov"):
        SGD([p], lr=0.1, nesterov=True)


def test_optimizer_state_dict_round_trip(plain_ctx):
    p = Parameter(et.encrypt(torch.ones(2, 2), plain_ctx))
    opt = SGD([p], lr=0.1, momentum=0.9)
    p.grad = et.encrypt(torch.ones(2, 2), plain_ctx)
    opt.step()
    sd = opt.state_dict()
    opt2 = SGD([p], lr=0.5, momentum=0.9)
    opt2.load_state_dict(sd)
    assert opt2.param_groups[0]["lr"] == 0.1
    assert torch.allclose(plain_ctx.decrypt(opt2.state[p]["momentum_buffer"]), torch.ones(2, 2, dtype=torch.float64))


def test_from_name_is_the_one_factory(plain_ctx):
    p = Parameter(et.encrypt(torch.zeros(1, 2), plain_ctx))
    nesterov = optim.from_name("nesterov", [p], lr=0.5, momentum=0.8)
    assert type(nesterov) is SGD and nesterov.defaults == dict(lr=0.5, momentum=0.8, dampening=0.0,
                                                                     weight_decay=0.0, nesterov=True)
    assert type(optim.from_name("nag", [p], lr=0.5)) is NAG
    plain = optim.from_name("sgd", [p], lr=0.5, momentum=0.8)
    assert plain.defaults["momentum"] == 0.0  # HETAL's "sgd" has no momentum
    with pytest.raises(ValueError, match="unknown optimizer"):
        optim.from_name("adam", [p], lr=0.5)
    assert set(optim.NAMES) == {"nesterov", "nag", "sgd"}


def test_optimizer_with_a_scheduler_pickles_and_resumes(plain_ctx):
    """torch's scheduler patches opt.step with a closure: pickling keeps the state, not the patch."""
    p = Parameter(et.encrypt(torch.ones(2, 2), plain_ctx))
    opt = SGD([p], lr=1.0, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    with et.refresh_with(plain_ctx):
        p.grad = et.encrypt(torch.ones(2, 2), plain_ctx)
        opt.step()
        sched.step()
    for clone in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        assert isinstance(clone, torch.optim.Optimizer) and clone.param_groups[0]["lr"] == 0.5
    opt2 = SGD([p], lr=1.0, momentum=0.9)
    opt2.load_state_dict(opt.state_dict())
    assert opt2.param_groups[0]["initial_lr"] == 1.0  # what a resumed scheduler needs
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, step_size=1, gamma=0.5)
    sched2.load_state_dict(sched.state_dict())
    sched2.step()
    assert opt2.param_groups[0]["lr"] == 0.25


def test_param_groups_have_their_own_lr(plain_ctx):
    a = Parameter(et.encrypt(torch.zeros(1, 2), plain_ctx))
    b = Parameter(et.encrypt(torch.zeros(1, 2), plain_ctx))
    opt = SGD([{"params": [a]}, {"params": [b], "lr": 0.1}], lr=1.0)
    opt.param_groups[0]["lr"] = 2.0  # documented: read at every step
    with et.refresh_with(plain_ctx):
        a.grad = et.encrypt(torch.ones(1, 2), plain_ctx)
        b.grad = et.encrypt(torch.ones(1, 2), plain_ctx)
        opt.step()
    assert torch.allclose(plain_ctx.decrypt(a), torch.full((1, 2), -2.0, dtype=torch.float64))
    assert torch.allclose(plain_ctx.decrypt(b), torch.full((1, 2), -0.1, dtype=torch.float64))
    with pytest.raises(ValueError, match="more than one"):
        opt.add_param_group({"params": [a]})


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_keeps_the_parameter_at_the_level_its_use_needs(any_ctx, momentum):
    """With ``use_levels`` = 1 on a 3-level preset: gradients (arriving at level 0, as DiagATB leaves
    them) come back from their refresh at 2 levels (3 with momentum), a buffer is refreshed before it
    could pull the parameter below 1, and the parameter never drops below 1 — so its use never asks for
    a refresh. Values match torch's rule within CKKS noise (exactly, on the plain backend)."""
    ctx = any_ctx
    w0 = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    tw = torch.nn.Parameter(w0.clone())
    topt = torch.optim.SGD([tw], lr=0.1, momentum=momentum, nesterov=bool(momentum))
    w = Parameter(et.encrypt(w0, ctx))
    w.use_levels = 1
    opt = SGD([w], lr=0.1, momentum=momentum, nesterov=bool(momentum))
    back: list[int] = []

    class Recording:
        def refresh(self, ciphers, stage="", level=None):
            fresh = ctx.refresh(ciphers, level=level)
            back.extend(c.level for c in fresh)
            return fresh

    steps, levels = 9, []
    with et.refresh_with(Recording()):
        for s in range(steps):
            g = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(10 + s))
            tw.grad = g.clone()
            topt.step()
            w.grad = et.encrypt(g, ctx, level=0)
            opt.step()
            levels.append(w.level)
    assert min(levels) == 1  # never below its use, and down to it (no level kept for nothing)
    if momentum:
        # grads back at 3 each step; the buffer (3 → 2 → 1) is refreshed to 3 in steps 4, 6 and 8,
        # where at level 1 it would leave the parameter at 0
        assert back == [3] * (steps + 3), back
        assert levels == [2, 2, 1, 1, 1, 1, 1, 1, 1]
    else:
        assert back == [2] * steps
        assert levels == [1] * steps
    exact = ctx.public().evaluator.backend.name == "plain"
    tol = 1e-9 if exact else ckks_tolerance(ctx.params, magnitude=4, depth=3 * steps)
    assert (ctx.decrypt(w) - tw.detach()).abs().max() <= tol


def test_sgd_without_a_refresher_keeps_its_old_levels(seal_ctx):
    """``use_levels`` changes nothing without an active Refresher: no refresh is asked early."""
    w = Parameter(et.encrypt(torch.zeros(2, 2), seal_ctx))
    w.use_levels = 2
    opt = SGD([w], lr=0.1, momentum=0.9)
    w.grad = et.encrypt(torch.ones(2, 2), seal_ctx)
    opt.step()
    w.grad = et.encrypt(torch.ones(2, 2), seal_ctx)
    opt.step()  # the buffer is at 2 levels (< use_levels + 1): no refresher, so none asked
    assert (w.level, opt.state[w]["momentum_buffer"].level) == (2, 2)
