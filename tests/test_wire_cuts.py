"""The wire's byte cuts and the exact-softmax protocol across the network.

Seeded replies and trimmed levels change bytes, never values or refresh counts; the exact-softmax
job over a real server equals the same job in one process (plaintext backend: exactly; SEAL: to
CKKS noise) and plain torch's cross-entropy training.
"""

from __future__ import annotations

import pytest
import torch
from test_server import TOKEN, running_server

import encrypted_torch as et
from encrypted_torch.ckks.noise import ckks_tolerance
from encrypted_torch.client import KeyOwner
from encrypted_torch.client.remote import RemoteSession, RetryPolicy
from encrypted_torch.errors import JobPolicyError
from encrypted_torch.nn.linear import Linear
from encrypted_torch.protocol.ciphers import decode_ciphers, encode_ciphers, encode_payloads
from encrypted_torch.protocol.wire import wire_cuts
from encrypted_torch.server import BUILDERS
from encrypted_torch.storage.dataset import StreamingLoader
from encrypted_torch.training import EarlyStopping, Trainer
from encrypted_torch.training.job import build_hetal_linear, validate_job

N, D, C, B = 64, 4, 3, 16


def test_seeded_replies_are_half_the_bytes_and_decode_to_the_same_values(seal_ctx):
    pub = seal_ctx.public()
    values = torch.linspace(-1, 1, seal_ctx.slots).double().numpy()
    cipher = pub.evaluator.mod_switch(pub.evaluator.encrypt(values), 0)
    full = encode_payloads(pub.fingerprint, *seal_ctx.refresh_payloads([cipher], seeded=False))
    seeded = encode_payloads(pub.fingerprint, *seal_ctx.refresh_payloads([cipher], seeded=True))
    assert len(seeded) < 0.55 * len(full)
    for raw in (full, seeded):
        (fresh,) = decode_ciphers(raw, pub, expected=1)
        assert fresh.level == pub.top_level
        assert abs(seal_ctx.decrypt_vector(fresh).real - values).max() < ckks_tolerance(seal_ctx.params)


def test_a_trimmed_refresh_is_at_the_asked_level_and_smaller(seal_ctx):
    pub = seal_ctx.public()
    values = torch.rand(seal_ctx.slots).double().numpy()
    cipher = pub.evaluator.mod_switch(pub.evaluator.encrypt(values), 0)
    top = encode_payloads(pub.fingerprint, *seal_ctx.refresh_payloads([cipher]))
    low = encode_payloads(pub.fingerprint, *seal_ctx.refresh_payloads([cipher], level=1))
    (fresh,) = decode_ciphers(low, pub, expected=1)
    assert fresh.level == 1 and len(low) < 0.6 * len(top)  # 2 of the 4 primes of preset "test"
    assert abs(seal_ctx.decrypt_vector(fresh).real - values).max() < ckks_tolerance(seal_ctx.params)


@pytest.mark.parametrize("cuts", ["all", "none"])
def test_a_trimming_server_sends_refresh_requests_at_level_0(seal_ctx, monkeypatch, cuts):
    """With ``trim`` the server's link mod-switches every request to level 0 before sending: fewer
    bytes for the same values (the key owner counts it against the planned level above it)."""
    from encrypted_torch.protocol.messages import RefreshReply, RefreshRequest
    from encrypted_torch.server.link import NetworkKeyOwner

    monkeypatch.setenv("ENCRYPTED_TORCH_WIRE_CUTS", cuts)
    pub = seal_ctx.public()
    values = torch.rand(seal_ctx.slots).double().numpy()
    cipher = pub.evaluator.mod_switch(pub.evaluator.encrypt(values), 2)
    sent: list[RefreshRequest] = []

    class Loopback:  # the key owner's side of the channel, in this process
        def send(self, msg):
            sent.append(msg)

        def expect(self, cls, timeout=None):
            (asked,) = decode_ciphers(sent[-1].ciphers, pub, expected=1)
            payloads = seal_ctx.refresh_payloads([asked], level=None if sent[-1].level < 0 else sent[-1].level)
            return RefreshReply(sent[-1].request_id, encode_payloads(pub.fingerprint, *payloads))

    (fresh,) = NetworkKeyOwner(Loopback(), pub).refresh([cipher], stage="refresh", level=3)
    (on_wire,) = decode_ciphers(sent[0].ciphers, pub, expected=1)
    assert on_wire.level == (0 if cuts == "all" else 2)
    assert fresh.level == (3 if cuts == "all" else pub.top_level)
    assert abs(seal_ctx.decrypt_vector(fresh).real - values).max() < ckks_tolerance(seal_ctx.params)
    if cuts == "all":
        full = len(encode_ciphers(pub, [cipher]))
        assert len(sent[0].ciphers) < 0.45 * full  # 1 of the 3 primes left at level 2
    # the epoch end's validation logits and state, and the exact softmax's logits, go the same way
    state = et.encrypt(torch.rand(3, 5, dtype=torch.float64), pub)
    sent_state = NetworkKeyOwner(Loopback(), pub)._lowest(state)
    assert {c.level for c in sent_state.ciphers()} == ({0} if cuts == "all" else {pub.top_level})
    assert (seal_ctx.decrypt(sent_state) - seal_ctx.decrypt(state)).abs().max() < ckks_tolerance(seal_ctx.params)


def test_the_wire_cut_setting_is_read_and_checked(monkeypatch):
    monkeypatch.setenv("ENCRYPTED_TORCH_WIRE_CUTS", "none")
    assert wire_cuts() == frozenset()
    monkeypatch.setenv("ENCRYPTED_TORCH_WIRE_CUTS", "seeded")
    assert wire_cuts() == {"seeded"}
    monkeypatch.delenv("ENCRYPTED_TORCH_WIRE_CUTS")
    assert wire_cuts() == {"seeded", "trim"}
    monkeypatch.setenv("ENCRYPTED_TORCH_WIRE_CUTS", "seeded,zip")
    with pytest.raises(ValueError, match="zip"):
        wire_cuts()


def _exact_job(epochs=2):
    return {"model": "hetal-linear", "in_features": D, "out_features": C, "lr": 1.0, "epochs": epochs,
            "softmax": "exact"}


def _data(secret):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(N, D, generator=g, dtype=torch.float64) * 2 - 1
    y = torch.randint(0, C, (N,), generator=g)
    owner = KeyOwner(secret, EarlyStopping(patience=100))
    train = owner.encrypt_dataset(x, y, num_classes=C, batch_size=B, keep_labels=True)
    val = owner.encrypt_dataset(x[:32], y[:32], num_classes=C, batch_size=B, name="val", keep_labels=True)
    torch.manual_seed(0)
    model = Linear(D, C).encrypt(owner.public_context, unit=train.unit)
    return owner, train, val, {"weight_bias": model.weight_bias.detach()}


def _in_process(secret):
    owner, train, val, init = _data(secret)
    job = validate_job(_exact_job(), BUILDERS)
    model, opt, criterion = build_hetal_linear(owner.public_context, job, init, train.unit)
    loader = StreamingLoader(train, shuffle=True, seed=job["seed"])
    Trainer(model, opt, owner, criterion, progress=False).fit(loader, val, job["epochs"])
    return secret.decrypt(model.state_dict()["weight_bias"])


@pytest.mark.parametrize("cuts", ["all", "none"])
@pytest.mark.parametrize("backend", ["plain", "seal"])
def test_exact_softmax_job_over_the_network_equals_the_in_process_run(tmp_path, plain_ctx, seal_ctx, backend, cuts,
                                                                     monkeypatch):
    if backend == "seal" and cuts == "none":
        pytest.skip("one SEAL run is enough: the cuts are checked on bytes above")
    monkeypatch.setenv("ENCRYPTED_TORCH_WIRE_CUTS", cuts)
    secret = plain_ctx if backend == "plain" else seal_ctx
    owner, train, val, init = _data(secret)
    with running_server(tmp_path, BUILDERS) as (_, url):
        session = RemoteSession(url, TOKEN, owner, timeout=60, retry=RetryPolicy(attempts=5, deadline=60))
        session.connect()
        session.upload(train, val)
        summary = session.train(_exact_job(), init)
        got = secret.decrypt(session.fetch_model()["weight_bias"])
        session.close()
    want = _in_process(secret)
    tol = 0.0 if backend == "plain" else 20 * ckks_tolerance(secret.params, keyswitches=30)
    assert (got - want).abs().max() <= tol
    assert session.gradient_requests == 2 * N // B  # one round trip per step, and nothing else for the softmax
    assert summary["steps"] == 2 * N // B


def test_a_hetal_job_gets_no_softmax_gradients(plain_ctx):
    """The key owner's own copy of a HETAL-softmax job plans no gradient request: the first one ends the job."""
    from encrypted_torch.client.policy import plan_job
    from encrypted_torch.data import KeptLabels
    from encrypted_torch.tensor.enctensor import encrypt
    from encrypted_torch.tensor.layout import BlockLayout

    owner, train, val, init = _data(plain_ctx)
    job = validate_job({**_exact_job(), "softmax": "default"}, BUILDERS)
    owner.expect(plan_job(owner.public_context, job, init, train, val))
    logits = encrypt(torch.zeros(B, C), owner.public_context, layout=BlockLayout((B, C), train.unit, "horizontal"))
    with pytest.raises(JobPolicyError, match="key-owner softmax"):
        owner.softmax_gradient(logits, KeptLabels("train", 0, B))


def test_server_refuses_an_exact_job_on_a_labelled_training_set(tmp_path, plain_ctx):
    secret = plain_ctx
    owner = KeyOwner(secret)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(N, D, generator=g), torch.randint(0, C, (N,), generator=g)
    train = owner.encrypt_dataset(x, y, num_classes=C, batch_size=B)
    val = owner.encrypt_dataset(x[:B], y[:B], num_classes=C, batch_size=B, name="val", keep_labels=True)
    init = {"weight_bias": Linear(D, C).encrypt(owner.public_context, unit=train.unit).weight_bias.detach()}
    with running_server(tmp_path, BUILDERS) as (_, url):
        session = RemoteSession(url, TOKEN, owner, timeout=30, retry=RetryPolicy(attempts=1, deadline=30))
        session.connect()
        session.upload(train, val)
        with pytest.raises(et.EncTorchError, match="labels"):
            session.train(_exact_job(), init)


def test_a_seeded_data_set_is_half_the_bytes_on_disk_and_trains_the_same(tmp_path, seal_ctx):
    """The key owner's data set for upload: secret-key encryptions kept in seeded form for writing."""
    from encrypted_torch.storage.dataset import open_dataset, write_dataset

    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(40, D, generator=g, dtype=torch.float64), torch.randint(0, C, (40,), generator=g)
    sizes = {}
    for seeded in (False, True):
        owner = KeyOwner(seal_ctx)
        ds = owner.encrypt_dataset(x, y, num_classes=C, batch_size=B, seeded=seeded, shuffle=False)
        manifest = write_dataset(ds, tmp_path / str(seeded))
        sizes[seeded] = sum(f.bytes for f in manifest.files())
        back = open_dataset(tmp_path / str(seeded), seal_ctx.public())
        got = torch.cat([seal_ctx.decrypt(b.x) for b in back])
        assert (got - x).abs().max() < ckks_tolerance(seal_ctx.params)
        y_back = torch.cat([seal_ctx.decrypt(b.y) for b in back]).argmax(1)
        assert torch.equal(y_back, y)
        # computing on the seeded set in memory works as on any other: x·2 decrypts to 2x
        doubled = ds[0].x * 2.0
        assert (seal_ctx.decrypt(doubled) - 2 * x[:B]).abs().max() < 4 * ckks_tolerance(seal_ctx.params)
    assert sizes[True] < 0.55 * sizes[False]


@pytest.mark.parametrize("softmax", ["default", "exact"])
@pytest.mark.parametrize("optimizer", ["sgd", "nesterov"])
def test_hetal_weights_are_never_refreshed_for_their_forward(softmax, optimizer):
    """HETAL's (1024, 769, 10) job on the fast preset, dry-run: with torch's SGD (plain or Nesterov)
    the optimizer keeps [W | b] at the level DiagABT uses it at, so no refresh is ever asked for the
    forward's weights; the gradient's and buffer's refreshes are all there is on the weights' side:
    one gradient per step (25 ciphertexts) and, with momentum, one buffer every third step."""
    from encrypted_torch.ckks.null_backend import null_context
    from encrypted_torch.hetal.pipeline import rotation_steps
    from encrypted_torch.training.refresh_plan import plan_refreshes
    from encrypted_torch.training.unit_choice import choose_unit

    b, d, c, steps = 1024, 768, 10, 13
    params = et.PRESETS["fast"]
    unit = choose_unit(b, d + 1, c, params)
    null = null_context(params, rotation_steps(unit, c))
    job = validate_job({"model": "hetal-linear", "in_features": d, "out_features": c, "lr": 1.0, "epochs": 2,
                        "softmax": softmax, "optimizer": optimizer}, BUILDERS)

    def build(ctx):
        init = Linear(d, c, init="zeros").encrypt(ctx, unit=unit).state_dict()
        return build_hetal_linear(ctx, job, dict(init), unit)

    plan = plan_refreshes(null, build, unit=unit, num_features=d, num_classes=c, train_rows=[b] * steps,
                          val_rows=[256], steps_per_epoch=steps, epochs=2)
    assert not [k for k in plan.per_epoch if k[0].startswith("DiagABT")], plan.per_epoch
    n_w = 25  # [W | b] is (10, 769) in (256, 32) blocks: 25 ciphertexts
    assert plan.per_epoch[("refresh", 0)] == n_w * steps  # the gradients, as DiagATB leaves them
    # the buffer, when at the 4 levels the weights are used at (steps 4, 7, 10 and 13 of an epoch)
    assert plan.per_epoch.get(("refresh", 4), 0) == (n_w * 4 if optimizer == "nesterov" else 0)
    assert {k[0] for k in plan.per_epoch if k[0] == "refresh" and k[1] not in (0, 4)} == set()
