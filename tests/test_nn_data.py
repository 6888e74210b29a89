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
