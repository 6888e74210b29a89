"""The opt-in exact-softmax protocol in one process: the key owner evaluates (softmax(z) − Y)/b.

The torch twin is plain ``cross_entropy`` (exact softmax): on the plaintext backend the encrypted
Trainer follows it to float64 rounding, on SEAL to the CKKS noise of its steps. The key owner
answers only planned gradient requests, for batches and labels it kept.
"""

from __future__ import annotations

import pytest
import torch

from encrypted_torch import optim
from encrypted_torch.ckks.noise import ckks_tolerance
from encrypted_torch.client import KeyOwner
from encrypted_torch.client.policy import plan_job
from encrypted_torch.data import KeptLabels
from encrypted_torch.errors import JobPolicyError, KeyOwnerRequiredError, ShapeError
from encrypted_torch.nn import CrossEntropyLoss, KeyOwnerCrossEntropyLoss
from encrypted_torch.nn.linear import Linear
from encrypted_torch.refresh import refresh_with
from encrypted_torch.tensor.enctensor import encrypt
from encrypted_torch.tensor.layout import BlockLayout
from encrypted_torch.training import EarlyStopping, Trainer
from encrypted_torch.training.job import build_hetal_linear, validate_job
from encrypted_torch.training.refresh_plan import KEY_OWNER_SOFTMAX

N, D, C, B = 64, 4, 3, 16  # 4 steps an epoch


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(N, D, generator=g, dtype=torch.float64) * 2 - 1
    y = torch.randint(0, C, (N,), generator=g)
    return x, y


def _packed(model, secret):
    return secret.decrypt(model.state_dict()["weight_bias"])


def _encrypted_run(secret, epochs):
    x, y = _data()
    owner = KeyOwner(secret, EarlyStopping(patience=100))
    train = owner.encrypt_dataset(x, y, num_classes=C, batch_size=B, shuffle=False, keep_labels=True)
    torch.manual_seed(0)
    model = Linear(D, C)
    init = model.packed_plain().clone()
    model.encrypt(owner.public_context, unit=train.unit)
    opt = optim.SGD(model.parameters(), lr=1.0, momentum=0.9, nesterov=True)
    trainer = Trainer(model, opt, owner, KeyOwnerCrossEntropyLoss(), progress=False)
    weights = []
    for _ in range(epochs):
        for batch in train:
            trainer.train_step(batch.x, batch.kept_labels)
            weights.append(_packed(model, secret))
    return owner, train, init, weights


def _torch_run(init, epochs):
    x, y = _data()
    model = torch.nn.Linear(D, C).double()
    with torch.no_grad():
        model.weight.copy_(init[:, :D])
        model.bias.copy_(init[:, D])
    opt = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.9, nesterov=True)
    weights = []
    for _ in range(epochs):
        for i in range(0, N, B):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[i:i + B]), y[i:i + B]).backward()
            opt.step()
            weights.append(torch.cat([model.weight, model.bias[:, None]], 1).detach().clone())
    return weights


def test_exact_softmax_trainer_follows_torch_step_by_step_on_the_plain_backend(plain_ctx):
    _, _, init, enc = _encrypted_run(plain_ctx, 2)
    ref = _torch_run(init, 2)
    assert len(enc) == len(ref) == 2 * N // B
    for step, (got, want) in enumerate(zip(enc, ref, strict=True)):
        assert (got - want).abs().max() < 1e-9, f"step {step}"
    assert (ref[-1] - init).abs().max() > 0.1


def test_exact_softmax_trainer_follows_torch_on_seal(seal_ctx):
    _, _, init, enc = _encrypted_run(seal_ctx, 1)
    ref = _torch_run(init, 1)
    for step, (got, want) in enumerate(zip(enc, ref, strict=True)):
        # a step's longest chain between fresh encryptions is one product's rotations (≈ 30 key switches)
        assert (got - want).abs().max() < (step + 1) * ckks_tolerance(seal_ctx.params, keyswitches=30), f"step {step}"
    assert (ref[-1] - init).abs().max() > 0.1


def test_gradient_is_exact_and_fresh_at_the_asked_level(plain_ctx):
    x, y = _data()
    owner = KeyOwner(plain_ctx)
    train = owner.encrypt_dataset(x, y, num_classes=C, batch_size=B, shuffle=True, keep_labels=True)
    z = torch.randn(B, C, dtype=torch.float64) * 3
    logits = encrypt(z, owner.public_context, layout=BlockLayout((B, C), train.unit, "horizontal"))
    batch = train[2]
    g = owner.softmax_gradient(logits.mod_switch_to(0), batch.kept_labels, level=1)
    assert g.level == 1 and g.layout == logits.layout
    labels = owner.kept_labels(batch.kept_labels)
    want = (torch.softmax(z, 1) - torch.nn.functional.one_hot(labels, C)) / B
    torch.testing.assert_close(owner.decrypt(g), want, atol=1e-12, rtol=0)
    # the kept labels of batch 2 are the shuffled rows the batch holds, not the first ones
    order = torch.randperm(N, generator=torch.Generator().manual_seed(0))
    assert torch.equal(labels, y[order][2 * B:3 * B])


def test_training_labels_never_leave_the_client(plain_ctx):
    x, y = _data()
    owner = KeyOwner(plain_ctx)
    train = owner.encrypt_dataset(x, y, num_classes=C, batch_size=B, keep_labels=True)
    assert not train.has_labels and all(b.y is None for b in train)
    assert train[1].kept_labels == KeptLabels("train", 1, B)


def test_key_owner_refuses_unkept_or_malformed_gradient_requests(plain_ctx):
    x, y = _data()
    owner = KeyOwner(plain_ctx)
    train = owner.encrypt_dataset(x, y, num_classes=C, batch_size=B, keep_labels=True)
    logits = encrypt(torch.zeros(B, C), owner.public_context,
                     layout=BlockLayout((B, C), train.unit, "horizontal"))
    for bad in (KeptLabels("val", 0, B), KeptLabels("train", N // B, B), KeptLabels("train", 0, B - 1)):
        fresh = KeyOwner(plain_ctx)
        fresh.encrypt_dataset(x, y, num_classes=C, batch_size=B, keep_labels=True)
        with pytest.raises(JobPolicyError):
            fresh.softmax_gradient(logits, bad)
    wrong = encrypt(torch.zeros(B, D), owner.public_context, layout=train[0].x.layout)
    with pytest.raises(JobPolicyError):
        owner.softmax_gradient(wrong, KeptLabels("train", 0, B))
    with pytest.raises(JobPolicyError, match="ended this job"):  # the first refusal ended the job
        owner.softmax_gradient(logits, KeptLabels("train", 0, B))


def test_gradient_requests_are_planned_and_budgeted(plain_ctx):
    x, y = _data()
    owner = KeyOwner(plain_ctx, EarlyStopping(patience=100))
    train = owner.encrypt_dataset(x, y, num_classes=C, batch_size=B, keep_labels=True)
    val = owner.encrypt_dataset(x[:B], y[:B], num_classes=C, batch_size=B, name="val", keep_labels=True)
    torch.manual_seed(0)
    init_model = Linear(D, C).encrypt(owner.public_context, unit=train.unit)
    init = {"weight_bias": init_model.weight_bias.detach()}
    job = validate_job({"model": "hetal-linear", "in_features": D, "out_features": C, "lr": 1.0,
                        "epochs": 2, "softmax": "exact"}, {"hetal-linear": build_hetal_linear})
    plan = plan_job(owner.public_context, job, init, train, val)
    logit_blocks = sum(n for (stage, _), n in plan.per_epoch.items() if stage == KEY_OWNER_SOFTMAX)
    assert logit_blocks == N // B  # one block of logits per step at these shapes
    assert not any("softmax" in stage and stage != KEY_OWNER_SOFTMAX for stage, _ in plan.per_epoch)
    owner.expect(plan)
    model, opt, criterion = build_hetal_linear(owner.public_context, job, init, train.unit)
    result = Trainer(model, opt, owner, criterion, progress=False).fit(train, val, epochs=2)
    assert result.epochs_run == 2
    # a third epoch's gradients are beyond the job
    logits = encrypt(torch.zeros(B, C), owner.public_context,
                     layout=BlockLayout((B, C), train.unit, "horizontal"))
    with pytest.raises(JobPolicyError):
        for i in range(N // B + 1):
            owner.softmax_gradient(logits, KeptLabels("train", i % (N // B), B))


def test_hetal_loss_on_kept_labels_and_exact_loss_without_key_owner_fail_clearly(plain_ctx):
    x, y = _data()
    owner = KeyOwner(plain_ctx)
    train = owner.encrypt_dataset(x, y, num_classes=C, batch_size=B, keep_labels=True)
    model = Linear(D, C).encrypt(owner.public_context, unit=train.unit)
    opt = optim.SGD(model.parameters(), lr=1.0)
    with pytest.raises(ShapeError, match="keep_labels"):
        Trainer(model, opt, owner, CrossEntropyLoss(), progress=False).fit(train, None, epochs=1)
    with pytest.raises(KeyOwnerRequiredError):
        KeyOwnerCrossEntropyLoss()(model(train[0].x), train[0].kept_labels)
    with refresh_with(owner.secret), pytest.raises(KeyOwnerRequiredError):  # a bare SecretContext has no labels
        KeyOwnerCrossEntropyLoss()(model(train[0].x), train[0].kept_labels)
    labelled = owner.encrypt_dataset(x, y, num_classes=C, batch_size=B, name="with-labels")
    with pytest.raises(ShapeError, match="keep_labels=True"):
        Trainer(model, opt, owner, KeyOwnerCrossEntropyLoss(), progress=False).fit(labelled, None, epochs=1)


def test_hetal_run_with_the_exact_softmax_equals_its_plaintext_twin_on_digits():
    """``python -m encrypted_torch.hetal --softmax exact`` in one process: the plaintext twin is torch's exact
    cross-entropy, so on the plaintext backend the two runs agree to float64 rounding, early stopping included."""
    from encrypted_torch.hetal.config import HetalConfig
    from encrypted_torch.hetal.pipeline import run

    cfg = HetalConfig(dataset="digits", preset="test", backend="plain", batch_size=256, epochs=3, patience=1,
                      max_steps=2, softmax="exact")
    report = run(cfg, progress=False)
    assert report.enc_test_acc == report.plain_test_acc and report.enc_test_acc > 0.6
    assert report.enc.epochs_run >= 2
    assert all(s.breakdown.get("softmax", 0) > 0 for s in report.enc.steps)  # the key owner's round trip
    learned = report.model.to_torch(report.client).weight
    assert torch.allclose(learned, report.plain.model.weight.double(), atol=1e-9)
