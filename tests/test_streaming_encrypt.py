"""Streaming encryption to disk (client.encrypt_data.encrypt_to_disk): the same ciphertexts' values as the
in-memory encrypt_batches, one batch in memory at a time, the key owner's validation labels kept."""

from __future__ import annotations

import gc

import pytest
import torch

from encrypted_torch.client import KeyOwner
from encrypted_torch.client.encrypt_data import encrypt_batches, encrypt_dataset_to_disk, encrypt_to_disk
from encrypted_torch.errors import ShapeError
from encrypted_torch.storage import MissingFileError, open_dataset, read_manifest
from encrypted_torch.tensor.enctensor import EncTensor, encrypt
from encrypted_torch.testing import assert_close

ROWS, FEATURES, CLASSES, BATCH = 70, 20, 3, 32  # batches of 32, 32 and 6 rows


def rows(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(ROWS, FEATURES, generator=g, dtype=torch.float64)
    return x / x.norm(dim=1, keepdim=True), torch.randint(0, CLASSES, (ROWS,), generator=g)


def batches(x: torch.Tensor, y: torch.Tensor | None, size: int = BATCH):
    for i in range(0, len(x), size):
        yield x[i : i + size], None if y is None else y[i : i + size]


def test_same_values_as_encrypt_batches(tmp_path, plain_ctx):
    x, y = rows()
    pub = plain_ctx.public()
    mem, order = encrypt_batches(x, y, pub, num_classes=CLASSES, batch_size=BATCH, shuffle=False)
    manifest = encrypt_to_disk(batches(x, y), tmp_path / "train", pub, num_classes=CLASSES)
    disk = open_dataset(tmp_path / "train", pub, verify=True)
    assert torch.equal(order, torch.arange(ROWS))
    assert (manifest.unit, manifest.num_samples, manifest.num_features) == (mem.unit, ROWS, FEATURES)
    assert [b.rows for b in manifest.batches] == [b.rows for b in mem.batches] == [32, 32, 6]
    assert len(disk) == len(mem)
    for i, (a, b) in enumerate(zip(disk.batches, mem.batches, strict=True)):
        assert a.x.layout == b.x.layout and a.y.layout == b.y.layout
        assert torch.equal(plain_ctx.decrypt(a.x), plain_ctx.decrypt(b.x))
        assert torch.equal(plain_ctx.decrypt(a.y), plain_ctx.decrypt(b.y))
        assert torch.equal(plain_ctx.decrypt(a.x), x[32 * i : 32 * i + a.rows])
        assert torch.equal(plain_ctx.decrypt(a.y).argmax(1), y[32 * i : 32 * i + a.rows])


def test_seal_round_trip(tmp_path, seal_ctx):
    x, y = rows(1)
    manifest = encrypt_to_disk(batches(x, y), tmp_path / "train", seal_ctx.public(), num_classes=CLASSES)
    disk = open_dataset(tmp_path / "train", seal_ctx.public(), verify=True)
    assert manifest.ckks["backend"] == "seal" and manifest.fingerprint == seal_ctx.fingerprint
    onehot = torch.nn.functional.one_hot(y, CLASSES).double()
    for i, b in enumerate(disk.batches):  # fresh encryptions: encoding noise only
        assert_close(b.x, x[BATCH * i : BATCH * i + b.rows], secret=seal_ctx, keyswitches=0)
        assert_close(b.y, onehot[BATCH * i : BATCH * i + b.rows], secret=seal_ctx, keyswitches=0)


def test_secret_context_writes_seeded_halves(tmp_path, seal_ctx):
    """The key owner's SecretContext encrypts with the secret key in seeded form: half the bytes, same values."""
    x, y = rows(3)
    public = encrypt_to_disk(batches(x, y), tmp_path / "pk", seal_ctx.public(), num_classes=CLASSES)
    seeded = encrypt_to_disk(batches(x, y), tmp_path / "sk", seal_ctx, num_classes=CLASSES)
    ratio = sum(f.bytes for f in seeded.files()) / sum(f.bytes for f in public.files())
    assert 0.45 < ratio < 0.55, ratio
    disk = open_dataset(tmp_path / "sk", seal_ctx.public(), verify=True)
    for i, b in enumerate(disk.batches):
        assert_close(b.x, x[BATCH * i : BATCH * i + b.rows], secret=seal_ctx, keyswitches=0)


def live_enctensors() -> int:
    gc.collect()
    return sum(issubclass(type(o), EncTensor) for o in gc.get_objects())  # type(): no __class__ lookups


def test_holds_one_batch_at_a_time(tmp_path, plain_ctx):
    """Before batch k is produced, nothing encrypted from batches < k is alive: memory does not grow."""
    x, y = rows()
    base = live_enctensors()
    seen = []

    def watched():
        for xb, yb in batches(torch.cat([x] * 4), torch.cat([y] * 4), 16):
            seen.append(live_enctensors() - base)
            yield xb, yb

    manifest = encrypt_to_disk(watched(), tmp_path / "train", plain_ctx.public(), num_classes=CLASSES)
    assert len(manifest.batches) == len(seen) == 18
    assert seen == [0] * 18
    assert live_enctensors() == base


def test_key_owner_keeps_validation_labels(tmp_path, plain_ctx):
    x, y = rows(2)
    owner = KeyOwner(plain_ctx)
    train = encrypt_dataset_to_disk(owner, batches(x, y), tmp_path / "train", num_classes=CLASSES)
    val = encrypt_dataset_to_disk(owner, batches(x[:40], y[:40], 16), tmp_path / "val", num_classes=CLASSES,
                                  name="val", keep_labels=True)
    assert train.has_labels and not val.has_labels
    assert owner.unit == train.unit == val.unit and owner.num_classes == CLASSES
    assert torch.equal(owner.state_dict()["val_labels"]["val"], y[:40])
    # the key owner scores decrypted validation logits against the labels it kept
    onehot = torch.nn.functional.one_hot(y[:40], CLASSES).double()
    logits = [encrypt(onehot[i : i + 16], plain_ctx.public()) for i in range(0, 40, 16)]
    assert owner.validation_metrics("val", logits)["val_acc"] == 1.0


def test_failure_leaves_no_manifest(tmp_path, plain_ctx):
    x, y = rows()

    def broken():
        yield x[:32], y[:32]
        raise RuntimeError("the feature extractor died")

    with pytest.raises(RuntimeError):
        encrypt_to_disk(broken(), tmp_path / "train", plain_ctx.public(), num_classes=CLASSES)
    with pytest.raises(MissingFileError, match="no manifest"):
        read_manifest(tmp_path / "train")


@pytest.mark.parametrize("bad, match", [
    (lambda x, y: iter(()), "empty"),
    (lambda x, y: iter([(x[:8], y[:8]), (x[8:16, :5], y[8:16])]), "batch 1 has 5 features, batch 0 had 20"),
    (lambda x, y: iter([(x[:8], None)]), "batch 0 has no labels"),
    (lambda x, y: iter([(x[:8], y[:7])]), "8 feature rows but 7 labels"),
    (lambda x, y: iter([(x[:0], y[:0])]), "rows > 0"),
    (lambda x, y: iter([(x[:8], y[:8] + CLASSES)]), "labels must lie in"),
])
def test_bad_batches_are_named(tmp_path, plain_ctx, bad, match):
    x, y = rows()
    with pytest.raises(ShapeError, match=match):
        encrypt_to_disk(bad(x, y), tmp_path / "train", plain_ctx.public(), num_classes=CLASSES)


def test_wrong_unit_and_too_many_classes(tmp_path, plain_ctx):
    x, y = rows()
    with pytest.raises(ShapeError, match="slots"):
        encrypt_to_disk(batches(x, y), tmp_path / "a", plain_ctx.public(), num_classes=CLASSES, unit=(8, 8))
    with pytest.raises(ShapeError, match="do not fit preset"):
        encrypt_to_disk(batches(x, y), tmp_path / "b", plain_ctx.public(), num_classes=4096)
