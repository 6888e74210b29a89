"""nn.Linear packing, the bias column, encrypted datasets and early stopping."""

from __future__ import annotations

import pytest
import torch

import encrypted_torch as et
from encrypted_torch.client import KeyOwner, encrypt_batches, one_hot
from encrypted_torch.nn import Linear, Parameter, with_bias_column
from encrypted_torch.training import EarlyStopping


def test_linear_encrypts_weight_and_bias_in_vertical_tiling(any_ctx):
    model = Linear(5, 3, generator=torch.Generator().manual_seed(0))
    w, b = model.plain_weight.clone(), model.plain_bias.clone()
    model.encrypt(any_ctx, unit=(64, 64))
    assert isinstance(model.weight_bias, Parameter) and model.weight_bias.requires_grad
    assert model.weight_bias.layout.tiling == "vertical" and model.plain_weight is None
    tol = 1e-6
    assert torch.allclose(any_ctx.decrypt(model.weight), w, atol=tol)
    assert torch.allclose(any_ctx.decrypt(model.bias), b, atol=tol)
    plain = model.to_torch(any_ctx)
    assert torch.allclose(plain.weight.double(), w, atol=tol)
    assert list(dict(model.named_parameters())) == ["weight_bias"]


def test_linear_refuses_wrong_input_width_and_unencrypted_use(plain_ctx):
    model = Linear(4, 2)
    x = et.encrypt(torch.ones(3, 4), plain_ctx, unit=(64, 64))
    with pytest.raises(et.ShapeError, match="encrypt"):
        model(x)
    model.encrypt(plain_ctx, unit=(64, 64))
    with pytest.raises(et.ShapeError, match="Linear\\(4, 2\\)"):
        model(et.encrypt(torch.ones(3, 5), plain_ctx, unit=(64, 64)))


@pytest.mark.parametrize("cols,unit", [(5, (64, 64)), (64, (64, 64)), (130, (32, 128))])
def test_bias_column_is_appended_to_valid_rows_only(plain_ctx, cols, unit):
    x = torch.randn(7, cols, dtype=torch.float64)
    xb = with_bias_column(et.encrypt(x, plain_ctx, unit=unit))
    assert xb.shape == (7, cols + 1)
    got = plain_ctx.decrypt(xb)
    assert torch.allclose(got, torch.cat([x, torch.ones(7, 1, dtype=torch.float64)], 1), atol=1e-12)
    # padding rows stay zero, so they add nothing to a gradient
    slots = [plain_ctx.decrypt_vector(c).real for c in xb.ciphers()]
    assert sum(abs(s).sum() for s in slots) == pytest.approx(abs(got).sum().item(), rel=1e-9)


def test_encrypt_batches_layouts_and_order(plain_ctx):
    x = torch.randn(10, 6)
    y = torch.arange(10) % 3
    ds, order = encrypt_batches(x, y, plain_ctx.public(), num_classes=3, batch_size=4, seed=1)
    assert [b.rows for b in ds] == [4, 4, 2] and ds.num_samples == 10 and ds.unit == ds.batches[0].x.layout.unit
    assert sorted(order.tolist()) == list(range(10))
    first = ds.batches[0]
    assert first.y.layout.tiling == "horizontal"
    assert torch.allclose(plain_ctx.decrypt(first.x), x[order[:4]].double(), atol=1e-6)
    assert torch.equal(plain_ctx.decrypt(first.y), one_hot(y[order[:4]], 3))


def test_one_hot_rejects_out_of_range():
    with pytest.raises(et.ShapeError, match="labels"):
        one_hot(torch.tensor([0, 3]), 3)


def test_key_owner_keeps_validation_labels_and_judges(plain_ctx):
    owner = KeyOwner(plain_ctx, EarlyStopping(patience=1))
    xv, yv = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    val = owner.encrypt_dataset(xv, yv, num_classes=3, batch_size=4, name="val", keep_labels=True, shuffle=False)
    assert not val.has_labels
    logits = [et.encrypt(torch.nn.functional.one_hot(yv[:4], 3) * 5.0, plain_ctx, unit=val.unit, tiling="horizontal"),
              et.encrypt(torch.nn.functional.one_hot(yv[4:], 3) * 5.0, plain_ctx, unit=val.unit, tiling="horizontal")]
    state = {"model.w": et.encrypt(torch.ones(3, 5), plain_ctx, unit=val.unit, tiling="vertical")}
    verdict = owner.end_epoch(0, "val", logits, state)
    assert owner.history[0]["val_acc"] == 1.0 and not verdict.stop
    assert verdict.refreshed["model.w"].level == plain_ctx.params.levels
    bad = [et.encrypt(torch.zeros(4, 3), plain_ctx, unit=val.unit, tiling="horizontal"),
           et.encrypt(torch.zeros(2, 3), plain_ctx, unit=val.unit, tiling="horizontal")]
    assert owner.end_epoch(1, "val", bad, state).stop  # patience 1: one worse epoch stops
    assert owner.best_epoch == 0
    assert torch.allclose(plain_ctx.decrypt(owner.best_state()["model.w"]), torch.ones(3, 5, dtype=torch.float64))


def test_early_stopping_counts_bad_epochs():
    es = EarlyStopping(patience=2)
    assert es.update(0, 1.0) == (True, False)
    assert es.update(1, 1.5) == (False, False)
    assert es.update(2, 0.9) == (True, False)
    assert es.update(3, 0.95) == (False, False)
    assert es.update(4, float("nan")) == (False, True)
    assert es.best_epoch == 2


# --- torch's conventions ------------------------------------------------------------------------------------------

@pytest.fixture
def fitted(plain_ctx):
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(16, 5, generator=g), torch.randint(0, 3, (16,), generator=g)
    owner = KeyOwner(plain_ctx)
    train = owner.encrypt_dataset(x, y, num_classes=3, batch_size=8, shuffle=False)
    model = Linear(5, 3, generator=g).encrypt(owner, like=train)
    return owner, x, y, train, model


def test_a_key_owner_works_wherever_a_secret_context_does(fitted, plain_ctx):
    owner, x, y, train, model = fitted
    assert owner.params == plain_ctx.params and owner.fingerprint == plain_ctx.fingerprint
    assert owner.public() is plain_ctx.public()
    assert torch.equal(owner.decrypt(train.batches[0].x), plain_ctx.decrypt(train.batches[0].x))
    c = train.batches[0].x.ciphers()[0]
    assert (owner.decrypt_vector(c) == plain_ctx.decrypt_vector(c)).all()
    with et.refresh_with(owner):
        loss = et.nn.CrossEntropyLoss()(model(train.batches[0].x), train.batches[0].y)
    assert loss.value(owner) == pytest.approx(loss.value(plain_ctx))
    assert torch.equal(model.to_torch(owner).weight, model.to_torch(plain_ctx).weight)


def test_to_torch_is_float64_like_decrypt_and_its_state_dict_loads_into_torch(fitted):
    owner, x, _, train, model = fitted
    clf = model.to_torch(owner)
    xd = owner.decrypt(train.batches[0].x)
    assert xd.dtype == clf.weight.dtype == torch.float64
    with et.refresh_with(owner):
        enc_logits = owner.decrypt(model(train.batches[0].x))
    assert torch.allclose(clf(xd), enc_logits, atol=1e-6)
    state = model.decrypted_state_dict(owner)
    assert list(state) == ["weight", "bias"] and list(clf.state_dict()) == ["weight", "bias"]
    plain = torch.nn.Linear(5, 3, dtype=torch.float64)
    plain.load_state_dict(state)
    assert torch.equal(plain.weight, clf.weight)
    assert list(model.state_dict()) == ["weight_bias"]  # the encrypted form keeps the packed entry


def test_cross_entropy_loss_is_a_module_with_torch_reductions(fitted):
    owner, _, _, train, model = fitted
    b = train.batches[0]
    mean, total = et.nn.CrossEntropyLoss(), et.nn.CrossEntropyLoss(reduction="sum")
    assert isinstance(mean, et.nn.Module) and "sum" in repr(total)
    with et.refresh_with(owner):
        lm, ls = mean(model(b.x), b.y), total(model(b.x), b.y)
    assert ls.value(owner) == pytest.approx(8 * lm.value(owner), rel=1e-9)
    with pytest.raises(ValueError, match="'mean' or 'sum'"):
        et.nn.CrossEntropyLoss(reduction="none")


def test_sequential_encrypts_its_layers_and_decrypts_to_torch(fitted):
    owner, x, _, train, _ = fitted
    torch.manual_seed(0)
    model = et.nn.Sequential(Linear(5, 3)).encrypt(owner, like=train)
    assert model[0].is_encrypted and list(dict(model.named_parameters())) == ["0.weight_bias"]
    with et.refresh_with(owner):
        logits = owner.decrypt(model(train.batches[0].x))
    clf = model.to_torch(owner)
    assert isinstance(clf, torch.nn.Sequential)
    assert torch.allclose(clf(owner.decrypt(train.batches[0].x)), logits, atol=1e-6)
    assert list(model.decrypted_state_dict(owner)) == ["0.weight", "0.bias"]
    with pytest.raises(TypeError, match="encrypted_torch.nn"):
        et.nn.Sequential(torch.nn.Linear(5, 3))


def test_the_key_owner_keeps_one_block_shape_for_all_its_data(plain_ctx):
    owner = KeyOwner(plain_ctx)
    a = owner.encrypt_dataset(torch.rand(64, 5), torch.arange(64) % 3, num_classes=3, batch_size=64)
    b = owner.encrypt_dataset(torch.rand(10, 5), torch.arange(10) % 3, num_classes=3, batch_size=5,
                              name="val", keep_labels=True)
    assert a.unit == b.unit == owner.unit
