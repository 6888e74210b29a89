"""What a PyTorch user gets wrong first, each answered by a typed error that names the fix."""

from __future__ import annotations

import pytest
import torch

import encrypted_torch as et
from encrypted_torch import nn
from encrypted_torch.client import KeyOwner
from encrypted_torch.errors import EncryptionRequiredError
from encrypted_torch.training import Trainer


@pytest.fixture
def job(plain_ctx):
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(24, 5, generator=g), torch.randint(0, 3, (24,), generator=g)
    owner = KeyOwner(plain_ctx)
    train = owner.encrypt_dataset(x, y, num_classes=3, batch_size=8)
    model = nn.Linear(5, 3).encrypt(owner, like=train)
    return owner, x, y, train, model


def test_a_plaintext_input_to_an_encrypted_model(job):
    owner, x, *_, model = job
    with pytest.raises(EncryptionRequiredError, match="encrypt_dataset") as err:
        model(x)
    assert isinstance(err.value, TypeError) and "to_torch" in str(err.value)


def test_loading_plaintext_weights_into_an_encrypted_model(job):
    *_, model = job
    with pytest.raises(EncryptionRequiredError, match="before encrypting"):
        model.load_state_dict({"weight_bias": torch.zeros(3, 6)})


def test_plaintext_weights_load_before_encryption(job):
    owner, *_, train, _ = job
    ref = torch.nn.Linear(5, 3)
    model = nn.Linear(5, 3)
    model.load_state_dict(ref.state_dict())
    model.encrypt(owner, like=train)
    got = model.decrypted_state_dict(owner)
    assert list(got) == ["weight", "bias"] and got["weight"].dtype == torch.float64
    assert torch.allclose(got["weight"], ref.weight.double(), atol=1e-9)


def test_one_hot_labels(plain_ctx):
    owner = KeyOwner(plain_ctx)
    y = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 1]), 3)
    with pytest.raises(et.ShapeError, match=r"one-hot.*argmax\(1\)"):
        owner.encrypt_dataset(torch.rand(4, 5), y, num_classes=3, batch_size=4)


def test_a_validation_set_encrypted_with_its_labels(job):
    owner, x, y, train, model = job
    from encrypted_torch import optim

    val = owner.encrypt_dataset(x, y, num_classes=3, batch_size=8, name="val")
    opt = optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(et.ShapeError, match="keep_labels=True"):
        Trainer(model, opt, key_owner=owner, progress=False).fit(train, val, epochs=1)
    with pytest.raises(et.ShapeError, match="keep_labels=True"):
        owner.validation_metrics("val", [])


def test_too_many_classes_names_the_preset_that_fits():
    owner = KeyOwner(et.SecretContext.create("fast", backend="plain"))
    with pytest.raises(et.ShapeError, match=r"100 classes.*'deep'.*128 classes"):
        owner.encrypt_dataset(torch.rand(8, 5), torch.arange(8) % 100, num_classes=100, batch_size=8)


def test_depth_error_outside_a_refresher_advises_one(job):
    owner, _, _, train, model = job
    batch = train.batches[0]
    with pytest.raises(et.DepthError) as err:
        nn.CrossEntropyLoss()(model(batch.x), batch.y).backward()
    assert "refresh_with(key_owner)" in str(err.value) and "Trainer" in str(err.value)
    assert "deeper preset" not in str(err.value)


def test_a_model_encrypted_without_the_data(plain_ctx):
    with pytest.raises(et.ShapeError, match="like=train"):
        nn.Linear(5, 3).encrypt(plain_ctx)


def test_a_model_and_data_in_different_block_shapes(job, plain_ctx):
    owner, x, *_ = job
    other = KeyOwner(plain_ctx).encrypt_dataset(x, torch.arange(24) % 3, num_classes=3, batch_size=8,
                                               unit=(128, 32))
    model = nn.Linear(5, 3).encrypt(owner, like=other)
    with pytest.raises(et.ShapeError, match="like="):
        model(job[3].batches[0].x)


def test_a_training_set_whose_labels_were_kept(job, plain_ctx):
    owner, x, y, _, model = job
    from encrypted_torch import optim

    kept = owner.encrypt_dataset(x, y, num_classes=3, batch_size=8, name="v", keep_labels=True)
    with pytest.raises(et.ShapeError, match="without keep_labels"), pytest.warns(UserWarning):
        Trainer(model, optim.SGD(model.parameters(), lr=0.1), key_owner=owner, progress=False).fit(kept, None, 1)
