"""Nothing a user saves is lost (issue #12.4) and backward() twice is torch's error (#12.5).

torch.save / torch.load (weights_only, torch's default), pickle and copy.deepcopy of EncTensors,
modules and optimizer state on both backends; typed errors before anything is written; backward's
retain_graph against torch.autograd.
"""

from __future__ import annotations

import copy
import gc
import io
import os
import pickle

import pytest
import torch

import encrypted_torch as et
from encrypted_torch import nn, optim
from encrypted_torch.autograd import Function
from encrypted_torch.ckks.noise import ckks_tolerance
from encrypted_torch.client import one_hot
from encrypted_torch.functional import cross_entropy


def _values(seed: int, shape: tuple[int, int] = (4, 3)) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) - 0.5


def _torch_round_trip(obj, **load_kwargs):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, **load_kwargs)


# --- EncTensor ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["pickle", "torch", "torch_unsafe"])
def test_enc_tensor_round_trips_bit_exact(any_ctx, how):
    x = et.encrypt(_values(0), any_ctx, requires_grad=True)
    if how == "pickle":
        y = pickle.loads(pickle.dumps(x))
    else:
        y = _torch_round_trip(x, weights_only=how == "torch")
    assert type(y) is et.EncTensor and y.ctx is any_ctx.public()
    assert y.requires_grad and y.is_leaf and y.grad is None  # torch keeps requires_grad, not grad
    assert y.layout == x.layout and y.level == x.level
    assert torch.equal(any_ctx.decrypt(y), any_ctx.decrypt(x))  # the same ciphertexts


def test_torch_save_stores_ciphertexts_raw(seal_ctx):
    x = et.encrypt(_values(1), seal_ctx)
    buf = io.BytesIO()
    torch.save(x, buf)
    assert len(buf.getvalue()) < 1.01 * len(x.to_bytes()) + 4096  # not as latin-1 text (protocol 2)


def test_deepcopy_is_an_independent_copy(any_ctx):
    x = et.encrypt(_values(2), any_ctx, requires_grad=True)
    x.grad = et.encrypt(_values(3), any_ctx)
    y = copy.deepcopy(x)
    assert y.ctx is x.ctx and y.requires_grad and y.grad is not None
    for a, b in zip(x.ciphers() + x.grad.ciphers(), y.ciphers() + y.grad.ciphers(), strict=True):
        assert a.handle is not b.handle and (a.level, a.scale, a.size) == (b.level, b.scale, b.size)
    assert torch.equal(any_ctx.decrypt(y), any_ctx.decrypt(x))
    assert torch.equal(any_ctx.decrypt(y.grad), any_ctx.decrypt(x.grad))
    expected = any_ctx.decrypt(y)
    for c in x.ciphers():  # change x's ciphertexts in place, as Evaluator's scale snapping may
        any_ctx.public().backend.set_scale(c.handle, c.scale * 2)
    assert torch.equal(any_ctx.decrypt(y), expected)


def test_contexts_pickle_only_public_material(plain_ctx):
    public = plain_ctx.public()
    again = pickle.loads(pickle.dumps(public))
    assert isinstance(again, et.PublicContext) and again.fingerprint == public.fingerprint
    assert copy.deepcopy(public) is public and copy.deepcopy(plain_ctx) is plain_ctx
    with pytest.raises(et.KeyRoleError, match="to_bytes"):
        pickle.dumps(plain_ctx)
    both = _torch_round_trip({"ctx": public, "x": et.encrypt(_values(6), public)})  # weights_only
    assert both["ctx"].fingerprint == public.fingerprint and both["x"].ctx is both["ctx"]
    with pytest.raises(et.KeyRoleError):
        torch.save({"keys": plain_ctx}, io.BytesIO())


# --- modules and optimizers ------------------------------------------------------------------------------
def _model(ctx, seed=0, d=5, c=3):
    unit = et.unit_shape(8, c, ctx.slots)
    return nn.Linear(d, c, generator=torch.Generator().manual_seed(seed)).encrypt(ctx, unit=unit), unit


def test_model_state_dict_torch_save_load_on_seal(seal_ctx, tmp_path):
    model, unit = _model(seal_ctx)
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []  # weights_only loads it
    fresh, _ = _model(seal_ctx, seed=1)
    fresh.load_state_dict(torch.load(path))
    assert torch.equal(seal_ctx.decrypt(fresh.weight_bias), seal_ctx.decrypt(model.weight_bias))
    assert isinstance(fresh.weight_bias, nn.Parameter) and fresh.weight_bias.requires_grad
    param = _torch_round_trip({"p": model.weight_bias})["p"]  # a Parameter stays one
    assert type(param) is nn.Parameter and param.requires_grad


def test_whole_module_pickles_and_deepcopies(seal_ctx):
    model, _ = _model(seal_ctx)
    for other in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model),
                  _torch_round_trip(model, weights_only=False)):  # torch: whole modules need weights_only=False
        assert isinstance(other.weight_bias, nn.Parameter)
        assert other._parameters["weight_bias"] is other.weight_bias  # one object, as before
        assert other.weight_bias is not model.weight_bias
        assert torch.equal(seal_ctx.decrypt(other.weight_bias), seal_ctx.decrypt(model.weight_bias))


def _manual_step(ctx, model, opt, seed):
    opt.zero_grad()
    model.weight_bias.grad = et.encrypt(_values(seed, tuple(model.weight_bias.shape)), ctx,
                                        layout=model.weight_bias.layout)
    with et.refresh_with(ctx):
        opt.step()


def test_sgd_momentum_state_round_trip_on_seal(seal_ctx, tmp_path):
    """Momentum buffers are encrypted; after save/load the next step is the uninterrupted one."""
    kw = dict(lr=0.5, momentum=0.9, nesterov=True)
    model, _ = _model(seal_ctx)
    w0 = seal_ctx.decrypt(model.weight_bias)
    opt = optim.SGD(model.parameters(), **kw)
    _manual_step(seal_ctx, model, opt, seed=10)
    assert isinstance(opt.state[model.weight_bias]["momentum_buffer"], et.EncTensor)
    et.save({"model": model.state_dict(), "optim": opt.state_dict()}, tmp_path / "ckpt.pt")
    saved = torch.load(tmp_path / "ckpt.pt")  # weights_only=True

    fresh, _ = _model(seal_ctx, seed=1)
    fresh_opt = optim.SGD(fresh.parameters(), lr=0.1)
    fresh.load_state_dict(saved["model"])
    fresh_opt.load_state_dict(saved["optim"])
    assert fresh_opt.param_groups[0]["momentum"] == 0.9
    _manual_step(seal_ctx, model, opt, seed=11)
    _manual_step(seal_ctx, fresh, fresh_opt, seed=11)

    w = torch.nn.Parameter(w0.clone())
    ref = torch.optim.SGD([w], **kw)
    for seed in (10, 11):
        w.grad = _values(seed, tuple(w.shape))
        ref.step()
    tol = ckks_tolerance(seal_ctx.params, magnitude=4.0, depth=3)
    got, resumed = seal_ctx.decrypt(model.weight_bias), seal_ctx.decrypt(fresh.weight_bias)
    assert (resumed - got).abs().max() < tol
    assert (resumed - w.detach()).abs().max() < tol


def test_training_step_after_save_load_is_exact_on_plain(plain_ctx):
    """A full step (forward, fused cross-entropy, backward, SGD) after torch.save/torch.load of
    model and optimizer is bit-identical to the step without the save (plaintext backend)."""
    g = torch.Generator().manual_seed(5)
    b, d, c = 8, 5, 3
    x, y = torch.rand(b, d, generator=g, dtype=torch.float64) - 0.5, torch.randint(0, c, (b,), generator=g)
    model, unit = _model(plain_ctx, d=d, c=c)
    xe = et.encrypt(x, plain_ctx, layout=et.BlockLayout((b, d), unit, "grid"))
    ye = et.encrypt(one_hot(y, c), plain_ctx, layout=et.BlockLayout((b, c), unit, "horizontal"))

    def step(m, o):
        o.zero_grad()
        with et.refresh_with(plain_ctx):
            cross_entropy(m(xe), ye).backward()
            o.step()

    opt = optim.SGD(model.parameters(), lr=1.0, momentum=0.9)
    step(model, opt)
    saved = _torch_round_trip({"model": model.state_dict(), "optim": opt.state_dict()})
    fresh, _ = _model(plain_ctx, seed=3, d=d, c=c)
    fresh_opt = optim.SGD(fresh.parameters(), lr=1.0, momentum=0.9)
    fresh.load_state_dict(saved["model"])
    fresh_opt.load_state_dict(saved["optim"])
    step(model, opt)
    step(fresh, fresh_opt)
    assert torch.equal(plain_ctx.decrypt(fresh.weight_bias), plain_ctx.decrypt(model.weight_bias))


# --- failures: typed, and before anything is written ----------------------------------------------------
def test_loading_without_the_context_is_a_typed_error():
    secret = et.SecretContext.create("test", backend="plain")
    public_bytes = secret.public_bytes()
    buf = io.BytesIO()
    torch.save({"w": et.encrypt(_values(4), secret)}, buf)
    expected = _values(4)
    del secret
    gc.collect()
    buf.seek(0)
    with pytest.raises(et.ContextNotLoadedError, match="load the public context"):
        torch.load(buf)
    for explicit in (True, False):
        buf.seek(0)
        public = et.PublicContext.from_bytes(public_bytes)
        state = et.load(buf, public) if explicit else torch.load(buf)  # a live context is found
        assert state["w"].ctx is public
        del public, state
        gc.collect()
    buf.seek(0)
    with et.load_context(et.PublicContext.from_bytes(public_bytes)) as public:
        w = torch.load(buf)["w"]
    assert w.ctx is public and w.shape == expected.shape


def test_load_context_rejects_other_objects():
    with pytest.raises(TypeError), et.load_context("not a context"):
        pass


def _listing(directory):
    return sorted(os.listdir(directory))


def test_failed_save_leaves_the_old_file_intact(plain_ctx, tmp_path):
    path = tmp_path / "model.pt"
    model, _ = _model(plain_ctx)
    et.save(model.state_dict(), path)
    before = path.read_bytes()
    for bad in ({"model": model.state_dict(), "keys": plain_ctx}, {"f": lambda: None}):
        with pytest.raises((et.KeyRoleError, AttributeError, pickle.PicklingError)):
            et.save(bad, path)
        assert path.read_bytes() == before and _listing(tmp_path) == ["model.pt"]  # no temp file left
    with pytest.raises(et.KeyRoleError):
        et.save({"keys": plain_ctx}, tmp_path / "new.pt")
    assert _listing(tmp_path) == ["model.pt"]
    # (torch.save(bad, path) truncates path before pickling, torch 2.13: the reason et.save exists.)


def test_save_to_a_file_object_writes_once(plain_ctx):
    buf = io.BytesIO(b"")
    with pytest.raises(et.KeyRoleError):
        et.save({"keys": plain_ctx}, buf)
    assert buf.getvalue() == b""
    et.save({"x": et.encrypt(_values(5), plain_ctx)}, buf)
    buf.seek(0)
    assert torch.equal(plain_ctx.decrypt(et.load(buf)["x"]), plain_ctx.decrypt(et.encrypt(_values(5), plain_ctx)))


def test_optimizer_state_under_another_key_is_refused(plain_ctx):
    model, _ = _model(plain_ctx)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _manual_step(plain_ctx, model, opt, seed=6)
    other = et.SecretContext.create("test", backend="plain")
    sd = opt.state_dict()
    buf = sd["state"][0]["momentum_buffer"]
    sd["state"][0]["momentum_buffer"] = et.encrypt(torch.zeros(buf.shape), other, layout=buf.layout)
    with pytest.raises(et.ContextMismatchError):
        opt.load_state_dict(sd)


# --- backward twice (#12.5) -------------------------------------------------------------------------------
def _graph(ctx, seed=7):
    xv, wv, gv = _values(seed), _values(seed + 1), _values(seed + 2)
    x = et.encrypt(xv, ctx, requires_grad=True)
    w = et.encrypt(wv, ctx, requires_grad=True)
    xt, wt = xv.clone().requires_grad_(True), wv.clone().requires_grad_(True)
    return (x, w, x * w + x), (xt, wt, xt * wt + xt), et.encrypt(gv, ctx), gv


def test_second_backward_raises_like_torch(any_ctx):
    (x, w, y), (xt, wt, yt), g, gt = _graph(any_ctx)
    yt.backward(gt)
    with pytest.raises(RuntimeError, match="retain_graph=True") as torch_err:
        yt.backward(gt)
    y.backward(g)
    first = any_ctx.decrypt(x.grad)
    with pytest.raises(et.GraphFreedError) as ours:
        y.backward(g)
    assert isinstance(ours.value, RuntimeError)
    assert str(ours.value).split(".")[0] == str(torch_err.value).split(".")[0]  # torch's wording
    assert torch.equal(any_ctx.decrypt(x.grad), first)  # nothing doubled
    with pytest.raises(et.GraphFreedError):
        y.grad_fn.ctx.saved_tensors  # noqa: B018 (freed, as in torch)


def test_retain_graph_accumulates_like_torch(plain_ctx):
    (x, w, y), (xt, wt, yt), g, gt = _graph(plain_ctx)
    for _ in range(2):
        yt.backward(gt, retain_graph=True)
        y.backward(g, retain_graph=True)
    yt.backward(gt)
    y.backward(g)  # the last one frees the graph
    assert torch.allclose(plain_ctx.decrypt(x.grad), xt.grad, rtol=0, atol=1e-12)
    assert torch.allclose(plain_ctx.decrypt(w.grad), wt.grad, rtol=0, atol=1e-12)
    with pytest.raises(et.GraphFreedError):
        y.backward(g)


def test_retain_graph_on_seal(seal_ctx):
    (x, w, y), (xt, wt, yt), g, gt = _graph(seal_ctx)
    y.backward(g, retain_graph=True)
    y.backward(g)
    yt.backward(gt, retain_graph=True)
    yt.backward(gt)
    tol = ckks_tolerance(seal_ctx.params, magnitude=2.0, keyswitches=1, depth=2)
    assert (seal_ctx.decrypt(x.grad) - xt.grad).abs().max() < tol
    assert (seal_ctx.decrypt(w.grad) - wt.grad).abs().max() < tol
    with pytest.raises(et.GraphFreedError):
        y.backward(g)


def test_graph_without_saved_tensors_also_refuses_a_second_backward(plain_ctx):
    """torch re-runs nodes that saved nothing (x + x twice doubles x.grad); we refuse: a doubled
    encrypted gradient cannot be noticed by looking at it (documented in docs/internals.md)."""
    x = et.encrypt(_values(8), plain_ctx, requires_grad=True)
    y = x + x
    g = et.encrypt(_values(9), plain_ctx)
    y.backward(g)
    with pytest.raises(et.GraphFreedError):
        y.backward(g)
    assert torch.allclose(plain_ctx.decrypt(x.grad), 2 * _values(9), atol=1e-12)


def test_loss_backward_twice(plain_ctx):
    b, c = 4, 3
    unit = et.unit_shape(b, c, plain_ctx.slots)
    logits = et.encrypt(_values(10, (b, c)), plain_ctx, tiling="horizontal", unit=unit, requires_grad=True)
    targets = et.encrypt(one_hot(torch.tensor([0, 1, 2, 0]), c), plain_ctx, tiling="horizontal", unit=unit)
    with et.refresh_with(plain_ctx):
        loss = cross_entropy(logits, targets)
        loss.backward(retain_graph=True)
        once = plain_ctx.decrypt(logits.grad)
        loss.backward()
        with pytest.raises(et.GraphFreedError):
            loss.backward()
    assert torch.allclose(plain_ctx.decrypt(logits.grad), 2 * once, atol=1e-12)


class _Boom(Function):
    @staticmethod
    def forward(ctx, a):
        return a.detach()

    @staticmethod
    def backward(ctx, grad):
        raise et.DepthError("boom backward", 2, 0)


def test_failed_backward_changes_no_grad_and_can_be_retried(plain_ctx):
    x = et.encrypt(_values(11), plain_ctx, requires_grad=True)
    y = _Boom.apply(x) + x
    with pytest.raises(et.DepthError):
        y.backward(et.encrypt(_values(12), plain_ctx))
    assert x.grad is None  # all or nothing: x's direct term was not accumulated alone
    assert not y.grad_fn.released
