"""On-disk formats: encrypted dataset directories, checkpoints, atomic writes, and resuming a Trainer."""

from __future__ import annotations

import gc
import json
import os
import random
import shutil
import weakref
from pathlib import Path

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

import encrypted_torch as et
from encrypted_torch.autograd.function import no_grad
from encrypted_torch.ckks import serialize
from encrypted_torch.client import KeyOwner
from encrypted_torch.data.dataset import DataLoader
from encrypted_torch.errors import EncTorchError
from encrypted_torch.nn.module import Module
from encrypted_torch.nn.parameter import Parameter
from encrypted_torch.optim import NAG, SGD
from encrypted_torch.server.job import make_optimizer
from encrypted_torch.storage import (
    Checkpointer,
    CheckpointError,
    ChecksumError,
    ManifestError,
    MissingFileError,
    StorageError,
    StreamingLoader,
    TruncatedFileError,
    WrongKeyError,
    atomic_write_bytes,
    decode_checkpoint,
    encode_checkpoint,
    load_checkpoint,
    open_dataset,
    read_manifest,
    save_checkpoint,
    write_dataset,
)
from encrypted_torch.storage.dataset import Manifest
from encrypted_torch.tensor.enctensor import EncTensor
from encrypted_torch.training import EarlyStopping, Trainer

# --- a model whose step needs only elementwise ops (no matmul/softmax), for training-loop tests -----------------


class Toy(Module):
    """logits = x ⊙ w, with w in the data's grid layout; refreshes w in place when it runs low."""

    def __init__(self, w: EncTensor) -> None:
        super().__init__()
        self.w = Parameter(w)

    def forward(self, x: EncTensor) -> EncTensor:
        if self.w.level < 3:
            self.w.set_(self.w.refresh())
        return x * self.w


class _Seed:
    def __init__(self, logits: EncTensor) -> None:
        self.logits = logits

    def backward(self) -> None:
        with no_grad():
            grad = self.logits * 0.05  # d/dlogits of 0.025·‖logits‖²
        self.logits.backward(grad)


class ToyLoss:
    def __call__(self, logits: EncTensor, target: EncTensor) -> _Seed:
        return _Seed(logits)


def build_toy(ctx, job, init, unit):
    """Server-side builder of the toy job (registered as model "toy")."""
    model = Toy(init["w"])
    return model, make_optimizer(job, model.parameters()), ToyLoss()


TOY_JOB = {"model": "toy", "in_features": 8, "out_features": 4, "lr": 0.5, "epochs": 3, "checkpoint_every": 1}


def toy_data(secret: et.SecretContext, seed: int = 0, n: int = 32, batch: int = 8):
    """(key owner, train, val, init) of a toy run: 8 features, 4 classes, full batches only."""
    owner = KeyOwner(secret, EarlyStopping(patience=3))
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (n,), generator=g)
    train = owner.encrypt_dataset(x, y, num_classes=4, batch_size=batch, seed=seed)
    val = owner.encrypt_dataset(x[: 2 * batch], y[: 2 * batch], num_classes=4, batch_size=batch, name="val",
                                keep_labels=True, shuffle=False)
    w0 = torch.full((batch, 8), 0.5, dtype=torch.float64)
    init = {"w": et.encrypt(w0, secret, layout=train.batches[0].x.layout)}
    return owner, train, val, init


def toy_reference(secret: et.SecretContext, job: dict | None = None, seed: int = 0) -> torch.Tensor:
    """The toy run in one process: the decrypted final weights a remote run must reproduce."""
    job = {**TOY_JOB, "optimizer": "nesterov", "momentum": 0.9, "seed": 0, "max_steps": None, **(job or {})}
    owner, train, val, init = toy_data(secret, seed)
    model, opt, crit = build_toy(None, job, init, train.unit)
    Trainer(model, opt, owner, crit, progress=False).fit(
        StreamingLoader(train, seed=job["seed"], max_steps=job["max_steps"]), val, job["epochs"])
    return secret.decrypt(model.w)


# --- fixtures -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_plain() -> et.SecretContext:
    return et.SecretContext.create("test", backend="plain")


@pytest.fixture
def saved(any_ctx, tmp_path):
    """A dataset directory with 4 labelled batches (last one short) and its in-memory original."""
    owner = KeyOwner(any_ctx)
    g = torch.Generator().manual_seed(3)
    x, y = torch.rand(27, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (27,), generator=g)
    ds = owner.encrypt_dataset(x, y, num_classes=3, batch_size=8, seed=1)
    write_dataset(ds, tmp_path / "train")
    return tmp_path / "train", ds, any_ctx


def _rewrite_manifest(directory: Path, edit) -> None:
    path = directory / "manifest.json"
    obj = json.loads(path.read_text())
    edit(obj)
    path.write_text(json.dumps(obj))


def _set_file(directory: Path, name: str, data: bytes) -> None:
    """Replace a batch file and make the manifest agree with it (only the content can then be wrong)."""
    import hashlib

    (directory / name).write_bytes(data)

    def edit(obj):
        for b in obj["batches"]:
            for part in ("x", "y"):
                if b[part] and b[part]["file"] == name:
                    b[part].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())

    _rewrite_manifest(directory, edit)


# --- datasets -----------------------------------------------------------------------------------------------------


def test_dataset_round_trip_decrypts_to_the_same_batches(saved):
    directory, ds, ctx = saved
    disk = open_dataset(directory, ctx.public(), verify=True)
    assert (len(disk), disk.num_samples, disk.unit, disk.name) == (4, 27, ds.unit, "train")
    assert disk.has_labels and disk.num_classes == 3 and disk.num_features == 6
    for a, b in zip(disk, ds, strict=True):
        assert a.rows == b.rows and a.x.layout == b.x.layout and a.y.layout == b.y.layout
        assert torch.allclose(ctx.decrypt(a.x), ctx.decrypt(b.x), atol=0)
        assert torch.allclose(ctx.decrypt(a.y), ctx.decrypt(b.y), atol=0)
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["public_key_fingerprint"] == ctx.fingerprint and manifest["ckks"]["n"] == 8192
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        ["manifest.json"] + [f"batch-{i:06d}-{p}.et" for i in range(4) for p in "xy"])


def test_disk_dataset_loads_one_batch_at_a_time(saved, monkeypatch):
    directory, _, ctx = saved
    disk = open_dataset(directory, ctx.public())
    loads = []
    real = EncTensor.from_bytes
    monkeypatch.setattr(EncTensor, "from_bytes", classmethod(lambda cls, d, c: loads.append(1) or real(d, c)))
    assert not loads  # opening reads only the manifest and file sizes
    alive = []
    for batch in StreamingLoader(disk, seed=0).iter_from(1):
        alive.append(weakref.ref(batch.x))
        del batch
        gc.collect()
        assert sum(r() is not None for r in alive) <= 1  # the previous batch is gone: memory stays bounded
    assert len(loads) == 2 * 3  # 3 of 4 batches (one skipped unread), features and labels


CORRUPTIONS = {
    "no manifest": (lambda d: (d / "manifest.json").unlink(), MissingFileError, "manifest.json", "open"),
    "manifest not JSON": (lambda d: (d / "manifest.json").write_bytes(b"{\x00"), ManifestError, "manifest.json",
                          "open"),
    "manifest field missing": (lambda d: _rewrite_manifest(d, lambda o: o.pop("unit")), ManifestError,
                               "manifest.json", "open"),
    "path traversal": (lambda d: _rewrite_manifest(d, lambda o: o["batches"][0]["x"].update(file="../x.et")),
                       ManifestError, "manifest.json", "open"),
    "sample count": (lambda d: _rewrite_manifest(d, lambda o: o.update(num_samples=3)), ManifestError,
                     "manifest.json", "open"),
    "other key": (lambda d: _rewrite_manifest(d, lambda o: o.update(public_key_fingerprint="ab" * 32)),
                  WrongKeyError, "manifest.json", "open"),
    "other params": (lambda d: _rewrite_manifest(d, lambda o: o["ckks"].update(name="fast")), WrongKeyError,
                     "manifest.json", "open"),
    "missing file": (lambda d: (d / "batch-000002-y.et").unlink(), MissingFileError, "batch-000002-y.et", "open"),
    "truncated file": (lambda d: (d / "batch-000001-x.et").write_bytes((d / "batch-000001-x.et").read_bytes()[:-9]),
                       TruncatedFileError, "batch-000001-x.et", "open"),
    "longer file": (lambda d: (d / "batch-000001-x.et").write_bytes((d / "batch-000001-x.et").read_bytes() + b"!"),
                    ChecksumError, "batch-000001-x.et", "open"),
    "bit flip": (lambda d: _flip(d / "batch-000003-x.et", 1000), ChecksumError, "batch-000003-x.et", "load"),
    "labels as features": (lambda d: _set_file(d, "batch-000000-x.et", (d / "batch-000000-y.et").read_bytes()),
                           ManifestError, "batch-000000-x.et", "content"),
    "framing garbage": (lambda d: _set_file(d, "batch-000000-y.et", b"ETORCH" + bytes(100)), StorageError,
                        "batch-000000-y.et", "content"),
}


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_every_corruption_is_a_typed_error_naming_the_file(saved, case):
    directory, _, ctx = saved
    corrupt, error, filename, when = CORRUPTIONS[case]
    corrupt(directory)
    if when == "open":
        with pytest.raises(error) as info:
            open_dataset(directory, ctx.public())
    else:
        disk = open_dataset(directory, ctx.public())  # sizes agree: the damage shows when the batch is read
        with pytest.raises(error) as info:
            list(disk)
        if when == "load":  # a checksum mismatch: a full verification finds it up front
            with pytest.raises(error):
                open_dataset(directory, ctx.public(), verify=True)
    assert info.value.path.name == filename and filename in str(info.value)


def test_data_encrypted_under_another_key_names_the_file(tmp_path, plain_ctx, other_plain):
    _, theirs, _, _ = toy_data(other_plain)
    _, ours, _, _ = toy_data(plain_ctx)
    write_dataset(ours, tmp_path / "ours")
    write_dataset(theirs, tmp_path / "theirs")
    with pytest.raises(WrongKeyError, match="manifest.json.*public key"):
        open_dataset(tmp_path / "theirs", plain_ctx.public())
    _set_file(tmp_path / "ours", "batch-000001-x.et", (tmp_path / "theirs" / "batch-000001-x.et").read_bytes())
    disk = open_dataset(tmp_path / "ours", plain_ctx.public(), verify=True)
    with pytest.raises(WrongKeyError, match="batch-000001-x.et"):
        disk.batches[1]


_json = st.recursive(st.none() | st.booleans() | st.integers(-3, 2**40) | st.floats(allow_nan=False)
                     | st.text(max_size=8), lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)


@given(_json)
def test_fuzz_manifest_structures_only_manifest_errors(obj):
    with pytest.raises(ManifestError):
        Manifest.from_json(obj, "fuzz/manifest.json")


@given(st.data())
def test_fuzz_valid_manifest_with_one_value_replaced(saved, data):
    directory, _, ctx = saved
    good = json.loads((directory / "manifest.json").read_text())
    obj = json.loads(json.dumps(good))
    node, path = obj, []
    while isinstance(node, (dict, list)) and node:  # walk to a random leaf or container
        key = data.draw(st.sampled_from(sorted(node) if isinstance(node, dict) else list(range(len(node)))))
        path.append(key)
        if data.draw(st.booleans()) or not isinstance(node[key], (dict, list)):
            node[key] = data.draw(_json)
            break
        node = node[key]
    try:
        Manifest.from_json(obj, "fuzz/manifest.json").check_context(ctx.public(), "fuzz/manifest.json")
    except EncTorchError as err:
        assert isinstance(err, StorageError) and "fuzz/manifest.json" in str(err)


@given(st.binary(max_size=300))
@example(b'{"format": "encrypted_torch.dataset", "version": 1}')
@example(b"[" * 100_000)
def test_fuzz_manifest_bytes(tmp_path_factory, raw):
    d = tmp_path_factory.mktemp("m")
    (d / "manifest.json").write_bytes(raw)
    with pytest.raises(ManifestError):
        read_manifest(d)


@given(st.binary(min_size=0, max_size=400), st.sampled_from(["meta", "raw", "mutate"]))
def test_fuzz_ciphertext_files_only_storage_errors(saved, tmp_path_factory, blob, mode):
    original, _, ctx = saved
    directory = tmp_path_factory.mktemp("fuzz") / "train"
    shutil.copytree(original, directory)
    good = (directory / "batch-000000-x.et").read_bytes()
    if mode == "raw":
        data = blob
    elif mode == "mutate":
        data = bytearray(good)
        for i in range(0, len(blob) - 2, 3):
            data[int.from_bytes(blob[i : i + 2], "little") % len(data)] = blob[i + 2]
        data = bytes(data[: len(data) - (blob[0] if blob else 0)])
    else:  # valid framing, hostile metadata and ciphertext bytes: reaches the SEAL loader
        sections = serialize.unpack(good, "enc_tensor")
        sections["b0"] = blob
        data = serialize.pack("enc_tensor", sections)
    _set_file(directory, "batch-000000-x.et", data or b"\x00")
    try:
        open_dataset(directory, ctx.public()).batches[0]
    except EncTorchError as err:
        assert isinstance(err, StorageError) and "batch-000000-x.et" in str(err)


def test_atomic_write_keeps_the_old_file_when_interrupted(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")

    def boom(*_):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_bytes(target, [b"new ", b"bytes"])
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f.bin"]


# --- loaders ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_steps", [None, 2])
def test_streaming_loader_follows_dataloader_order_and_resumes(plain_ctx, max_steps):
    _, train, _, _ = toy_data(plain_ctx, n=40)
    ref, ours = DataLoader(train, shuffle=True, seed=7), StreamingLoader(train, shuffle=True, seed=7,
                                                                         max_steps=max_steps)
    for _ in range(3):
        want = [id(b) for b in ref][:max_steps]
        state = json.loads(json.dumps(ours.rng_state()))  # as a checkpoint stores it
        assert [id(b) for b in ours] == want
        resumed = StreamingLoader(train, shuffle=True, seed=0, max_steps=max_steps)
        resumed.set_rng_state((state[0], tuple(state[1]), state[2]))
        assert [id(b) for b in resumed.iter_from(1)] == want[1:]


# --- checkpoints --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("opt_name", ["sgd", "nag"])
def test_checkpoint_round_trip(any_ctx, tmp_path, opt_name):
    p = Parameter(et.encrypt(torch.ones(2, 3), any_ctx))
    opt = SGD([p], lr=0.1, momentum=0.9) if opt_name == "sgd" else NAG([p], lr=0.1)
    with et.refresh_with(any_ctx):
        for _ in range(2):
            p.grad = et.encrypt(torch.full((2, 3), 0.5), any_ctx)
            opt.step()
    rng = random.Random(3).getstate()
    state = {"epoch": 2, "step": 5, "loader_rng": rng, "model": {"w": p.detach()}, "optimizer": opt.state_dict(),
             "result": {"steps": [], "epochs": [{"epoch": 0, "stop": False}], "stopped_epoch": -1, "epochs_run": 1}}
    save_checkpoint(tmp_path / "c.et", state, any_ctx.fingerprint)
    back = load_checkpoint(tmp_path / "c.et", any_ctx.public())
    assert (back["epoch"], back["step"], back["result"]) == (2, 5, state["result"])
    assert back["loader_rng"] == json.loads(json.dumps(rng))
    assert torch.allclose(any_ctx.decrypt(back["model"]["w"]), any_ctx.decrypt(p), atol=0)
    buf = "momentum_buffer" if opt_name == "sgd" else "v"
    assert torch.allclose(any_ctx.decrypt(back["optimizer"]["state"]["0"][buf]),
                          any_ctx.decrypt(opt.state[p][buf]), atol=0)
    opt2 = SGD([p], lr=1.0, momentum=0.5) if opt_name == "sgd" else NAG([p], lr=1.0)
    opt2.load_state_dict(back["optimizer"])
    assert opt2.param_groups[0]["lr"] == 0.1


def test_checkpoint_errors_name_the_file(plain_ctx, other_plain, tmp_path):
    t = et.encrypt(torch.ones(1, 2), plain_ctx)
    path = tmp_path / "checkpoint.et"
    save_checkpoint(path, {"model": {"w": t}}, plain_ctx.fingerprint)
    with pytest.raises(WrongKeyError, match="checkpoint.et"):
        load_checkpoint(path, other_plain.public())
    _flip(path, 50)
    with pytest.raises(CheckpointError, match="checkpoint.et"):
        load_checkpoint(path, plain_ctx.public())
    with pytest.raises(MissingFileError, match="nothing.et"):
        load_checkpoint(tmp_path / "nothing.et", plain_ctx.public())
    with pytest.raises(ValueError, match=r"\$"):
        encode_checkpoint({"$tensor": 1}, plain_ctx.fingerprint)


@given(st.binary(max_size=300), _json)
def test_fuzz_checkpoint_decoder(plain_ctx, blob, meta):
    pub = plain_ctx.public()
    good_meta = {"format": "encrypted_torch.checkpoint", "version": 1, "fingerprint": pub.fingerprint,
                 "state": {"a": meta, "t": {"$tensor": "t0"}}}
    for data in (blob, serialize.pack("checkpoint", {"meta": serialize.dumps_json(good_meta), "t0": blob})):
        try:
            decode_checkpoint(data, pub, "fuzz.et")
        except EncTorchError as err:
            assert isinstance(err, StorageError) and "fuzz.et" in str(err)


# --- resuming a Trainer -------------------------------------------------------------------------------------------


class _Crash(Exception):
    pass


class _CrashAfter:
    def __init__(self, steps: int) -> None:
        self.steps = steps

    def on_step_end(self, trainer, epoch, step):
        if len(trainer.result.steps) == self.steps:
            raise _Crash


@pytest.mark.parametrize("crash_after,every", [(2, 1), (4, 1), (6, 4), (11, 3)])
@pytest.mark.parametrize("loader_kind", ["streaming", "dataset"])
def test_trainer_resumes_from_a_checkpoint_exactly(plain_ctx, tmp_path, crash_after, every, loader_kind):
    """Crash mid-epoch or at an epoch end, restore into fresh objects: the same weights and records."""
    job = {**TOY_JOB, "optimizer": "nesterov", "momentum": 0.9}
    owner, train, val, init = toy_data(plain_ctx)

    def loader():
        return StreamingLoader(train, seed=0) if loader_kind == "streaming" else train

    def fresh():
        model, opt, crit = build_toy(None, job, init, train.unit)
        return model, Trainer(model, opt, owner, crit, progress=False,
                              callbacks=[Checkpointer(tmp_path / "c.et", plain_ctx.fingerprint, every)])

    model, trainer = fresh()
    reference = trainer.fit(loader(), val, job["epochs"])
    want, history = plain_ctx.decrypt(model.w), list(owner.history)

    owner.load_state_dict(KeyOwner(plain_ctx).state_dict() | {"val_labels": owner.state_dict()["val_labels"]})
    (tmp_path / "c.et").unlink()
    snapshots = {}
    model, trainer = fresh()
    trainer.callbacks.append(_CrashAfter(crash_after))
    trainer.callbacks.append(type("Snap", (), {"on_epoch_end": lambda s, t, e: snapshots.update(
        {e: owner.state_dict()})})())
    with pytest.raises(_Crash):
        trainer.fit(loader(), val, job["epochs"])
    state = load_checkpoint(tmp_path / "c.et", plain_ctx.public())
    done_epochs = state["epoch"]
    if done_epochs:  # the key owner forgets epochs the server will judge again
        owner.load_state_dict(snapshots[done_epochs - 1])
    model, trainer = fresh()
    trainer.load_state_dict(state)
    result = trainer.fit(loader(), val, job["epochs"])
    assert torch.equal(plain_ctx.decrypt(model.w), want)
    assert len(result.steps) == len(reference.steps) == 12 and result.epochs_run == 3
    assert [h["val_loss"] for h in owner.history] == [h["val_loss"] for h in history]
