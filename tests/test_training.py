"""Encrypted fine-tuning end to end: backward rules, a real-CKKS run on digits, early stopping, roles."""

from __future__ import annotations

import pytest
import torch

import encrypted_torch as et
from encrypted_torch import nn
from encrypted_torch.client import one_hot
from encrypted_torch.functional import cross_entropy
from encrypted_torch.hetal import config_for, run
from encrypted_torch.hetal.pipeline import rotation_steps

SECRET_TYPES = {"SecretContext", "SealKeyOwner", "SecretKey", "Decryptor", "KeyGenerator", "_PlainKeyOwner"}


def _linear_step(ctx, b=24, d=20, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, d, generator=g, dtype=torch.float64) - 0.5
    y = torch.randint(0, c, (b,), generator=g)
    unit = et.unit_shape(b, c, ctx.slots)
    xe = et.encrypt(x, ctx, layout=et.BlockLayout((b, d), unit, "grid"))
    ye = et.encrypt(one_hot(y, c), ctx, layout=et.BlockLayout((b, c), unit, "horizontal"))
    model = nn.Linear(d, c, generator=g)
    packed = model.packed_plain().clone()
    model.encrypt(ctx, unit=unit)
    with et.refresh_with(ctx):
        loss = cross_entropy(model(xe), ye)
        loss.backward()
    return x, y, packed, model, loss


def _torch_grad(x, y, packed):
    w = packed.clone().requires_grad_(True)
    xb = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    torch.nn.functional.cross_entropy(xb @ w.T, y).backward()
    return w.grad, xb


@pytest.fixture(scope="module")
def plain_fast():
    return et.SecretContext.create("fast", backend="plain")


def test_linear_cross_entropy_gradient_is_exact_given_the_approximate_softmax(plain_fast):
    x, y, packed, model, loss = _linear_step(plain_fast)
    got = plain_fast.decrypt(model.weight_bias.grad)
    p = loss.probabilities(plain_fast)
    xb = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    expected = (p - one_hot(y, 3)).T @ xb / len(x)
    assert torch.allclose(got, expected, atol=1e-9, rtol=0)
    ref, _ = _torch_grad(x, y, packed)  # torch.autograd with the exact softmax
    assert (got - ref).abs().max() < 5e-3  # the softmax approximation's error, times |x̄| ≤ 1


def test_linear_cross_entropy_gradient_on_real_ckks():
    unit = et.unit_shape(24, 3, et.PRESETS["fast"].slots)
    ctx = et.SecretContext.create("fast", rotations=rotation_steps(unit, 3))
    x, y, packed, model, loss = _linear_step(ctx)
    got = ctx.decrypt(model.weight_bias.grad)
    ref, _ = _torch_grad(x, y, packed)
    assert (got - ref).abs().max() < 5e-3
    assert loss.value(ctx) == pytest.approx(
        torch.nn.functional.cross_entropy(
            torch.cat([x, torch.ones(24, 1, dtype=x.dtype)], 1) @ packed.T, y).item(), abs=1e-4)


def test_encrypted_training_on_digits_matches_plaintext_training():
    """Real CKKS (N=16384): test accuracy within 2 points of the same training in torch."""
    report = run(config_for("digits", preset="fast", batch_size=256, epochs=2, max_steps=2), progress=False)
    s = report.summary()
    assert s["epochs_run"] == 2 and s["steps"] == 4
    assert abs(report.enc_test_acc - report.plain_test_acc) <= 0.02, s
    assert report.enc_test_acc > 0.6, s
    assert s["refreshes_per_step"] > 0 and {"matmul", "softmax", "optimizer", "refresh"} <= set(s["breakdown_seconds"])
    _assert_no_secret_reachable(report.model)
    _assert_no_secret_reachable(report.model.weight_bias.ctx)


def test_early_stopping_stops_and_restores_the_best_epoch():
    cfg = config_for("digits", preset="fast", backend="plain", batch_size=256, epochs=8, max_steps=1,
                     patience=1, lr=40.0, optimizer="sgd")
    report = run(cfg, progress=False)
    losses = [h["val_loss"] for h in report.client_history]
    best = min(range(len(losses)), key=losses.__getitem__)
    assert report.enc.stopped_epoch == best + 1 == report.enc.epochs_run - 1, losses
    assert report.best_epoch == best
    weights = report.client.secret.decrypt(report.model.weight_bias)
    assert torch.allclose(weights, report.client._best["model.weight_bias"], atol=1e-9)


def _assert_no_secret_reachable(root: object) -> None:
    seen: set[int] = set()
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, (str, bytes, int, float, torch.Tensor)):
            continue
        seen.add(id(obj))
        assert type(obj).__name__ not in SECRET_TYPES, f"server-side object reaches a {type(obj).__name__}"
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif hasattr(obj, "__dict__"):
            stack.extend(vars(obj).values())


# --- fit's inputs and jobs ------------------------------------------------------------------------------------

def _toy_job(secret, n=32, batch=16, patience=5):
    from encrypted_torch import optim
    from encrypted_torch.client import KeyOwner
    from encrypted_torch.training import EarlyStopping

    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(n, 6, generator=g) - 0.5, torch.randint(0, 3, (n,), generator=g)
    owner = KeyOwner(secret, EarlyStopping(patience=patience))
    train = owner.encrypt_dataset(x, y, num_classes=3, batch_size=batch)
    val = owner.encrypt_dataset(x, y, num_classes=3, batch_size=batch, name="val", keep_labels=True)
    model = nn.Linear(6, 3, init="zeros").encrypt(owner.public_context, unit=train.unit)
    return owner, train, val, model, optim.SGD(model.parameters(), lr=0.5)


@pytest.mark.parametrize("kind", ["dataset", "tuples", "our_loader", "torch_loader"])
def test_fit_takes_any_iterable_of_x_y_batches(plain_ctx, kind):
    from encrypted_torch.data.dataset import DataLoader
    from encrypted_torch.training import Trainer

    owner, train, val, model, opt = _toy_job(plain_ctx)
    data = {"dataset": train, "tuples": [(b.x, b.y) for b in train], "our_loader": DataLoader(train, seed=1),
            "torch_loader": torch.utils.data.DataLoader(train, batch_size=None, shuffle=True)}[kind]
    result = Trainer(model, opt, key_owner=owner, progress=False).fit(data, val, epochs=2)
    assert len(result.steps) == 4 and result.epochs_run == 2
    assert [h["epoch"] for h in owner.history] == [0, 1]
    assert owner.decrypt(model.weight).abs().max() > 0


def test_fit_without_validation_says_so_and_keeps_the_last_weights(plain_ctx):
    from encrypted_torch.training import Trainer

    owner, train, _, model, opt = _toy_job(plain_ctx)
    with pytest.warns(UserWarning, match="no early stopping"):
        result = Trainer(model, opt, key_owner=owner, progress=False).fit(train, None, epochs=2)
    assert result.epochs_run == 2 and result.stopped_epoch == -1 and owner.history == []
    assert owner.decrypt(model.weight).abs().max() > 0


def test_fitting_twice_starts_fresh_unless_asked_to_continue(plain_ctx):
    from encrypted_torch.training import Trainer

    owner, train, val, model, opt = _toy_job(plain_ctx, patience=1)
    trainer = Trainer(model, opt, key_owner=owner, progress=False)
    first = trainer.fit(train, val, epochs=2)
    assert first.epochs_run == 2 and [h["epoch"] for h in owner.history] == [0, 1]
    second = trainer.fit(train, val, epochs=2)  # a new job: epoch 0 again, early stopping reset
    assert second.epochs_run == 2 and [h["epoch"] for h in owner.history] == [0, 1]
    assert [[h["epoch"] for h in job] for job in owner.past_jobs] == [[0, 1]]
    more = trainer.fit(train, val, epochs=4, start_epoch=2, resume=True)  # the same job, epochs 2 and 3
    assert [h["epoch"] for h in owner.history][:3] == [0, 1, 2] and more.epochs_run >= 3
    judged = list(owner.history)
    trainer.fit(train, val, epochs=1, resume=True)  # a replayed epoch gets its recorded bit, no new verdict
    assert owner.history == judged


def test_begin_job_keeps_the_plan_and_the_server_link_cannot_reset(plain_ctx):
    from encrypted_torch.server.link import NetworkKeyOwner
    from encrypted_torch.training.refresh_plan import RefreshPlan
    from encrypted_torch.training.trainer import StartsJobs

    owner, *_ = _toy_job(plain_ctx)
    plan = RefreshPlan.__new__(RefreshPlan)
    owner.expect(plan, replay_steps=3)
    owner.begin_job()
    assert owner.policy.plan is plan and owner.policy.replay_steps == 3 and owner.policy.verdicts == {}
    assert isinstance(owner, StartsJobs)
    assert not hasattr(NetworkKeyOwner, "begin_job")
