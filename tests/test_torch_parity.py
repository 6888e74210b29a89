"""The encrypted stack against plain torch, step by step: the Trainer, NAG, torch's lr schedulers.

The Trainer's softmax is an approximation, so its torch twin uses the same one
(``SoftmaxConfig.reference``, the numpy model of the ciphertext softmax) inside an otherwise
ordinary torch loop: ``nn.Linear``, ``torch.optim.SGD``, ``zero_grad / backward / step``. On the
plaintext backend the two agree to float64 rounding; on SEAL to the CKKS noise of a step.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import encrypted_torch as et
from encrypted_torch import optim
from encrypted_torch.approx.softmax import SoftmaxConfig
from encrypted_torch.ckks.noise import ckks_tolerance
from encrypted_torch.client import KeyOwner
from encrypted_torch.nn import Parameter
from encrypted_torch.nn.linear import Linear
from encrypted_torch.training import EarlyStopping, Trainer

N, D, C, B = 64, 4, 3, 16  # 4 steps an epoch


class ApproxSoftmaxCrossEntropy(torch.autograd.Function):
    """Cross-entropy whose backward is (P≈ − Y)/b with the encrypted softmax's P≈ (the fused op's rule)."""

    @staticmethod
    def forward(ctx, logits, target):
        p = torch.from_numpy(SoftmaxConfig().reference(logits.detach().numpy()))
        ctx.save_for_backward(p - torch.nn.functional.one_hot(target, logits.shape[1]).to(p.dtype))
        return torch.nn.functional.cross_entropy(logits, target)

    @staticmethod
    def backward(ctx, grad):
        (diff,) = ctx.saved_tensors
        return grad * diff / diff.shape[0], None


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(N, D, generator=g, dtype=torch.float64) * 2 - 1
    y = torch.randint(0, C, (N,), generator=g)
    return x, y


def _packed(model, secret) -> torch.Tensor:
    """[W | b] of an encrypted Linear, decrypted in float64, whatever its state_dict keys."""
    sd = {k: secret.decrypt(v) for k, v in model.state_dict().items()}
    if "weight_bias" in sd:
        return sd["weight_bias"]
    return torch.cat([sd["weight"], sd["bias"][:, None]], 1)


def encrypted_trainer_weights(secret, epochs, make_opt, sched=None):
    """[W | b] after every Trainer step, and the initial packed weights."""
    x, y = _data()
    owner = KeyOwner(secret, EarlyStopping(patience=100))
    train = owner.encrypt_dataset(x, y, num_classes=C, batch_size=B, shuffle=False)
    torch.manual_seed(0)
    model = Linear(D, C)
    init = model.packed_plain().clone()
    model.encrypt(owner.public_context, unit=train.unit)
    opt = make_opt(model.parameters())
    scheduler = sched(opt) if sched else None
    trainer = Trainer(model, opt, owner, progress=False)
    weights = []
    for _ in range(epochs):
        for batch in train:
            trainer.train_step(batch.x, batch.y)
            weights.append(_packed(model, secret))
        if scheduler:
            scheduler.step()
    return init, weights


def torch_loop_weights(init, epochs, make_opt, sched=None):
    """The same training as an ordinary torch loop (same init, same batches in the same order)."""
    x, y = _data()
    model = torch.nn.Linear(D, C).double()
    with torch.no_grad():
        model.weight.copy_(init[:, :D])
        model.bias.copy_(init[:, D])
    opt = make_opt(model.parameters())
    scheduler = sched(opt) if sched else None
    weights = []
    for _ in range(epochs):
        for i in range(0, N, B):
            opt.zero_grad()
            loss = ApproxSoftmaxCrossEntropy.apply(model(x[i:i + B]), y[i:i + B])
            loss.backward()
            opt.step()
            weights.append(torch.cat([model.weight, model.bias[:, None]], 1).detach().clone())
        if scheduler:
            scheduler.step()
    return weights


def _nesterov(params, module=optim):
    return module.SGD(params, lr=1.0, momentum=0.9, nesterov=True)


def _step_tolerance(params, steps):
    """CKKS noise after ``steps`` training steps on SEAL, from ckks_tolerance.

    Each stage of a step starts from a refreshed (fresh) ciphertext; the longest chain between
    refreshes is a product's rotations (DiagABT / DiagATB: ≈ 30 key switches at these shapes,
    docs/matmul.md); one step's error carries into the next through the weights and the momentum
    buffer, so the bound grows with the steps. Measured (preset "test", 8 steps): 1.4e-5 after
    step 1, 6.2e-5 after step 8, against 1.2e-4 and 9.2e-4 here; the weights move by 0.19 in the
    first step, so a step that learns nothing is four orders of magnitude outside.
    """
    return steps * ckks_tolerance(params, keyswitches=30)


def test_trainer_matches_a_torch_loop_step_by_step_on_the_plain_backend(plain_ctx):
    init, enc = encrypted_trainer_weights(plain_ctx, 2, _nesterov)
    ref = torch_loop_weights(init, 2, lambda p: _nesterov(p, torch.optim))
    assert len(enc) == len(ref) == 2 * N // B
    for step, (got, want) in enumerate(zip(enc, ref, strict=True)):
        assert (got - want).abs().max() < 1e-9, f"step {step}"
    assert (ref[-1] - init).abs().max() > 0.1  # it learned something: a frozen model cannot pass


def test_trainer_matches_a_torch_loop_step_by_step_on_seal(seal_ctx):
    init, enc = encrypted_trainer_weights(seal_ctx, 1, _nesterov)
    ref = torch_loop_weights(init, 1, lambda p: _nesterov(p, torch.optim))
    for step, (got, want) in enumerate(zip(enc, ref, strict=True)):
        err = (got - want).abs().max().item()
        assert err < _step_tolerance(seal_ctx.params, step + 1), f"step {step}: {err}"


# --- NAG against numbers computed by hand from the paper's recurrence ---------------------------------
# Kim et al. 2018 / HETAL: λ_0 = 0, λ_{t+1} = (1 + √(1 + 4λ_t²))/2, γ_t = (1 − λ_t)/λ_{t+1};
# v_{t+1} = w_t − η·g_t, w_{t+1} = (1 − γ_t)·v_{t+1} + γ_t·v_t.
# λ_1 = 1, λ_2 = (1 + √5)/2 = 1.6180339887, λ_3 = (1 + √(1 + 4·2.6180339887))/2 = 2.1935270853,
# λ_4 = (1 + √(1 + 4·4.8115610741))/2 = 2.7497913401, so γ_1 = 0, γ_2 = −0.6180339887/2.1935270853
# = −0.2817535, γ_3 = −1.1935270853/2.7497913401 = −0.4340428.
# One scalar weight w_0 = 1, η = 0.5, gradients g = 1, −2, 0.5 (given, not computed from w):
#   t=1: v_1 = 1 − 0.5 = 0.5;            w_1 = v_1 = 0.5
#   t=2: v_2 = 0.5 + 1 = 1.5;            w_2 = 1.2817535·1.5 − 0.2817535·0.5 = 1.7817535
#   t=3: v_3 = 1.7817535 − 0.25 = 1.5317535; w_3 = 1.4340428·1.5317535 − 0.4340428·1.5 = 1.5455359
NAG_W0, NAG_LR, NAG_GRADS = 1.0, 0.5, (1.0, -2.0, 0.5)
NAG_TABLE = (0.5, 1.7817535, 1.5455359)


def test_nag_table_is_what_the_recurrence_gives():
    """The hand-computed table, recomputed here in long form (guards the table's arithmetic)."""
    lam = [0.0, 1.0]
    for _ in range(3):
        lam.append((1 + math.sqrt(1 + 4 * lam[-1] ** 2)) / 2)
    assert lam[2] == pytest.approx(1.6180339887, abs=1e-9) and lam[3] == pytest.approx(2.1935270853, abs=1e-9)
    w, v_prev, ws = NAG_W0, None, []
    for t, g in enumerate(NAG_GRADS, start=1):
        gamma = (1 - lam[t]) / lam[t + 1]
        v = w - NAG_LR * g
        w = v if v_prev is None else (1 - gamma) * v + gamma * v_prev
        v_prev = v
        ws.append(w)
    assert ws == pytest.approx(NAG_TABLE, abs=1e-7)


def _run_nag(ctx):
    p = Parameter(et.encrypt(torch.full((2, 3), NAG_W0, dtype=torch.float64), ctx))
    opt = optim.NAG([p], lr=NAG_LR)
    got = []
    with et.refresh_with(ctx):
        for g in NAG_GRADS:
            p.grad = et.encrypt(torch.full((2, 3), g, dtype=torch.float64), ctx)
            opt.step()
            got.append(ctx.decrypt(p))
    return got


def test_nag_matches_the_hand_computed_table_on_the_plain_backend(plain_ctx):
    for want, got in zip(NAG_TABLE, _run_nag(plain_ctx), strict=True):
        assert got.sub(want).abs().max() < 1e-7  # the table's 7 decimals


def test_nag_matches_the_hand_computed_table_on_seal(seal_ctx):
    tol = ckks_tolerance(seal_ctx.params, magnitude=2, depth=6) + 1e-7
    for want, got in zip(NAG_TABLE, _run_nag(seal_ctx), strict=True):
        assert got.sub(want).abs().max() < tol


# --- torch's lr schedulers drive the encrypted optimizers -----------------------------------------------
SCHEDULERS = {
    "StepLR": lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5),
    "MultiStepLR": lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones=[1, 3], gamma=0.3),
    "CosineAnnealingLR": lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=5),
    "LambdaLR": lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda e: 1 / (1 + e)),
    "ExponentialLR": lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.7),
}
GRADS = [torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(s)) for s in range(6)]


def _scheduled(ctx, make_sched, **sgd):
    """(encrypted weights, torch weights, lrs seen) after each of len(GRADS) steps + scheduler steps."""
    w0 = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    tw, ew = torch.nn.Parameter(w0.clone()), Parameter(et.encrypt(w0, ctx))
    topt, eopt = torch.optim.SGD([tw], **sgd), optim.SGD([ew], **sgd)
    tsched, esched = make_sched(topt), make_sched(eopt)
    rows = []
    with et.refresh_with(ctx):
        for g in GRADS:
            tw.grad, ew.grad = g.clone(), et.encrypt(g, ctx)
            topt.step()
            eopt.step()
            tsched.step()
            esched.step()
            rows.append((ctx.decrypt(ew), tw.detach().clone(), eopt.param_groups[0]["lr"], topt.param_groups[0]["lr"]))
    return rows


@pytest.mark.parametrize("name", SCHEDULERS)
def test_torch_schedulers_drive_encrypted_sgd_on_the_plain_backend(plain_ctx, name):
    rows = _scheduled(plain_ctx, SCHEDULERS[name], lr=0.5, momentum=0.9)
    lrs = [r[2] for r in rows]
    assert len(set(lrs)) > 1  # the schedule changed the lr
    for got, want, lr, torch_lr in rows:
        assert lr == torch_lr
        assert (got - want).abs().max() < 1e-9


def test_steplr_drives_encrypted_sgd_on_seal(seal_ctx):
    rows = _scheduled(seal_ctx, SCHEDULERS["StepLR"], lr=0.5, momentum=0.9, nesterov=True)
    for t, (got, want, lr, torch_lr) in enumerate(rows, start=1):
        assert lr == torch_lr
        assert (got - want).abs().max() < ckks_tolerance(seal_ctx.params, magnitude=8, depth=3 * t)


def test_a_scheduler_changes_the_encrypted_update(plain_ctx):
    """Not only param_groups: the step after a scheduler's decay moves the weights by the new lr."""
    ctx = plain_ctx
    p = Parameter(et.encrypt(torch.zeros(1, 2, dtype=torch.float64), ctx))
    opt = optim.SGD([p], lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.1)
    with et.refresh_with(ctx):
        for _ in range(2):
            p.grad = et.encrypt(torch.ones(1, 2, dtype=torch.float64), ctx)
            opt.step()
            sched.step()
    assert np.allclose(ctx.decrypt(p).numpy(), -1.1, atol=1e-12)
    assert opt.param_groups[0]["initial_lr"] == 1.0


# --- the torch Optimizer contract ---------------------------------------------------------------------------
def test_step_with_a_closure_recomputes_the_loss_and_returns_it(plain_ctx):
    x, y = _data()
    owner = KeyOwner(plain_ctx, EarlyStopping(patience=100))
    train = owner.encrypt_dataset(x[:B], y[:B], num_classes=C, batch_size=B, shuffle=False)
    torch.manual_seed(0)
    model = Linear(D, C)
    init = model.packed_plain().clone()
    model.encrypt(owner.public_context, unit=train.unit)
    opt = optim.SGD(model.parameters(), lr=1.0)
    criterion = Trainer(model, opt, owner, progress=False).criterion
    batch = next(iter(train))
    calls = []

    def closure():
        opt.zero_grad()
        loss = criterion(model(batch.x), batch.y)
        loss.backward()
        calls.append(loss)
        return loss

    with et.refresh_with(owner):
        loss = opt.step(closure)
        assert calls == [loss]
        ref = torch_loop_weights(init, 1, lambda p: torch.optim.SGD(p, lr=1.0))[0]
        assert (_packed(model, plain_ctx) - ref).abs().max() < 1e-9
        assert opt.step() is None  # no closure, no loss (torch's contract)


def test_encrypted_optimizers_are_torch_optimizers(plain_ctx):
    p = Parameter(et.encrypt(torch.zeros(1, 2), plain_ctx))
    for opt in (optim.SGD([p], lr=0.1), optim.NAG([p], lr=0.1),
                optim.from_name("nesterov", [p], lr=0.1, momentum=0.9)):
        assert isinstance(opt, torch.optim.Optimizer) and isinstance(opt, optim.EncOptimizer)
    assert optim.EncOptimizer is optim.Optimizer
    seen = []
    opt = optim.SGD([p], lr=0.1)
    opt.register_step_post_hook(lambda o, args, kwargs: seen.append(o))
    p.grad = et.encrypt(torch.ones(1, 2), plain_ctx)
    with et.refresh_with(plain_ctx):
        opt.step()
    assert seen == [opt]
