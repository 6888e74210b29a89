"""Encrypted inference as a service: a server's trained encrypted model, a client's encrypted features.

One HETAL digits job is trained once per module on an in-process server (plaintext backend: exact,
so encrypted logits must equal local torch inference to float precision); each test then starts
its own server on that workdir (``resume``) with the limits it needs. One SEAL run goes through
both CLIs as separate OS processes.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from websockets.sync.client import connect

import encrypted_torch as et
from encrypted_torch.ckks import serialize
from encrypted_torch.ckks.noise import ckks_tolerance
from encrypted_torch.ckks.params import get_params
from encrypted_torch.client import KeyOwner
from encrypted_torch.client.infer import EncryptedInference, FeatureFileError, read_features
from encrypted_torch.client.infer import main as infer_main
from encrypted_torch.client.remote import RemoteSession
from encrypted_torch.errors import ContextMismatchError, DepthError
from encrypted_torch.hetal.config import config_for
from encrypted_torch.hetal.prepare import decrypt_linear, prepare_hetal
from encrypted_torch.protocol import AuthenticationError, ProtocolError, RemoteError, SessionError
from encrypted_torch.protocol.ciphers import encode_payloads
from encrypted_torch.protocol.messages import InferReply, InferRequest, ServerHello, decode
from encrypted_torch.server import Limits, ServerConfig, TrainingServer
from encrypted_torch.tensor.enctensor import EncTensor
from encrypted_torch.tensor.layout import BlockLayout
from encrypted_torch.training.inference_plan import input_layout, input_level

TOKEN = "loopback-inference-token-0123456789"
ROOT = Path(__file__).resolve().parents[1]
PLAIN_TOL = 1e-9  # the plaintext backend is exact: only float64 summation order differs


@contextlib.contextmanager
def server_on(workdir: Path, **limits):
    lim = Limits(idle_timeout=60, reply_timeout=60, attach_timeout=30, **limits)
    server = TrainingServer(ServerConfig(workdir, TOKEN.encode(), resume=True, allow_plain=True, limits=lim))
    server.start()
    try:
        yield server, f"ws://127.0.0.1:{server.port}"
    finally:
        server.shutdown()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(workdir, prep, session id, local torch model): digits, preset "fast" on the plaintext backend."""
    workdir = tmp_path_factory.mktemp("inference-server")
    cfg = config_for("digits", preset="fast", backend="plain", batch_size=64, epochs=1, max_steps=2, lr=1.0)
    prep = prepare_hetal(cfg)
    with server_on(workdir) as (_, url):
        session = RemoteSession(url, TOKEN, prep.key_owner, timeout=120)
        session.connect()
        session.upload(prep.train, prep.val)
        session.train(prep.job(), prep.init)
        local = decrypt_linear(session.fetch_model(), prep.secret, prep.in_features)
        session.close()
    return workdir, prep, session.session_id, local


def _attach(url: str, prep, session_id: str, owner: KeyOwner | None = None) -> RemoteSession:
    session = RemoteSession(url, TOKEN, owner or KeyOwner(prep.secret), session_id=session_id, timeout=60)
    session.connect()
    return session


def test_encrypted_logits_equal_local_inference_batched(trained):
    """Three batched requests; the key owner answers nothing (any request from the server, a refresh say,
    would fail ``expect(InferReply)``), and the server counts the rows against the session's quota."""
    workdir, prep, sid, local = trained
    x, y = prep.test
    x = x[:150]  # three requests of 64, 64 and 22 rows
    with server_on(workdir) as (server, url):
        session = _attach(url, prep, sid)
        inference = EncryptedInference(session, prep.job(), prep.init, batch_size=64)
        got = inference.logits(x)
        session.close()
    with torch.no_grad():
        want = local(x.double())
    assert got.shape == want.shape == (150, prep.num_classes)
    assert (got - want).abs().max().item() < PLAIN_TOL
    assert torch.equal(got.argmax(1), want.argmax(1))
    st = inference.stats
    assert (st.batches, st.rows) == (3, 150) and st.bytes_sent > 0 and st.bytes_received > 0
    assert inference.level == 3 < prep.secret.public().top_level  # DiagABT takes 3 of "fast"'s 7 levels
    record = json.loads((workdir / "sessions" / sid / "session.json").read_text())
    assert record["inferred_rows"] >= 150


def test_the_server_holds_no_secret_key_and_no_plaintext(trained):
    workdir, prep, sid, _ = trained
    with server_on(workdir) as (server, url):
        session = _attach(url, prep, sid)
        EncryptedInference(session, prep.job(), prep.init).logits(prep.test[0][:8])
        ctx = server.sessions.get(sid).context()
        session.close()
    assert isinstance(ctx, et.PublicContext) and not isinstance(ctx, et.SecretContext)
    with pytest.raises(et.KeyRoleError, match="cannot decrypt"):
        ctx.decrypt(None)
    for path in workdir.rglob("*.et"):
        kind, _, _ = serialize.read_head(path.read_bytes()[: 1 << 16], 1 << 16)
        assert kind != "secret_context", path


def test_wrong_token_is_refused_before_any_session(trained):
    workdir, prep, sid, _ = trained
    with server_on(workdir) as (server, url):
        before = len(server.sessions)
        session = RemoteSession(url, "a-different-token-of-enough-length", KeyOwner(prep.secret), session_id=sid)
        with pytest.raises(AuthenticationError) as info:
            session.connect()
        assert isinstance(info.value, RemoteError) and len(server.sessions) == before


def test_an_infer_request_before_authentication_is_refused(trained):
    workdir, prep, sid, _ = trained
    x = et.encrypt(prep.test[0][:4], prep.key_owner.public_context,
                   layout=BlockLayout((4, prep.in_features), prep.train.unit, "grid"))
    with server_on(workdir) as (server, url), connect(url, compression=None, max_size=None) as ws:
        assert isinstance(decode(ws.recv(10)), ServerHello)
        ws.send(InferRequest(0, 4, x.to_bytes()).encode())  # over the 64 KiB a stranger may send
        with pytest.raises(Exception) as info:
            for _ in range(3):
                ws.recv(10)
        assert "1009" in str(info.value) or "1008" in str(info.value)


def test_another_key_is_refused(trained):
    workdir, prep, sid, _ = trained
    other = et.SecretContext.create("fast", backend="plain")
    with server_on(workdir) as (server, url):
        with pytest.raises(ContextMismatchError, match="another key owner"):  # its fingerprint, at the hello
            _attach(url, prep, sid, KeyOwner(other))
        session = _attach(url, prep, sid)  # the right key's session, another key's ciphertexts
        session.channel.send(InferRequest(1, 4, _ciphers(other, prep.test[0][:4], prep.train.unit, 3)))
        with pytest.raises(ContextMismatchError, match="another key"):
            session.channel.expect(InferReply, 30)


@pytest.mark.parametrize("case", ["rows", "session_quota"])
def test_limits_are_typed_errors_naming_the_flag(trained, case):
    workdir, prep, sid, _ = trained
    limits = {"max_infer_rows": 32} if case == "rows" else {"max_infer_session_rows": 1}
    flag = "--max-infer-rows" if case == "rows" else "--max-infer-session-rows"
    with server_on(workdir, **limits) as (server, url):
        session = _attach(url, prep, sid)
        with pytest.raises(SessionError, match=flag):
            EncryptedInference(session, prep.job(), prep.init, batch_size=64).logits(prep.test[0][:64])


def _ciphers(secret, x, unit, level: int, drop: int = 0) -> bytes:
    """Features as the client sends them (a cipher list at ``level``), less the last ``drop`` blocks."""
    packed = input_layout(x.shape[0], x.shape[1], unit).pack(x.double().numpy())
    vectors = [packed[i, j] for i in range(packed.shape[0]) for j in range(packed.shape[1])]
    records, payloads = secret.encrypt_payloads(vectors[: len(vectors) - drop], level)
    return encode_payloads(secret.fingerprint, records, payloads)


def _bad_request(prep, case: str) -> InferRequest:
    x, unit = prep.test[0][:8], prep.train.unit
    if case == "declared_rows":  # 1 row declared, more bytes than its blocks can need
        return InferRequest(2, 1, _ciphers(prep.secret, x, unit, 3) + b"\0" * (4 << 20))
    if case == "count":
        return InferRequest(2, 8, _ciphers(prep.secret, x, unit, 3, drop=1))
    if case == "stale":
        return InferRequest(2, 8, _ciphers(prep.secret, x, unit, 2))
    return InferRequest(2, 8, b"not a cipher list")


@pytest.mark.parametrize("case,error,match", [
    ("declared_rows", ProtocolError, "can need"),
    ("count", ProtocolError, "were asked for"),
    ("stale", ProtocolError, "needs level 3 or more"),
    ("garbage", et.SerializationError, None),
])
def test_bad_requests_are_typed_errors_and_the_server_keeps_serving(trained, case, error, match):
    workdir, prep, sid, local = trained
    with server_on(workdir) as (server, url):
        session = _attach(url, prep, sid)
        session.channel.send(_bad_request(prep, case))
        with pytest.raises(error, match=match):
            session.channel.expect(InferReply, 30)
        again = _attach(url, prep, sid)
        got = EncryptedInference(again, prep.job(), prep.init).logits(prep.test[0][:8])
        again.close()
    assert (got - local(prep.test[0][:8].double()).detach()).abs().max().item() < PLAIN_TOL


def test_the_planned_input_level_is_the_real_one(trained, seal_ctx):
    """The dry run's level is the lowest at which the real forward pass runs: one below raises DepthError."""
    from encrypted_torch.nn.linear import Linear

    _, prep, _, local = trained
    for secret, unit in ((prep.secret, prep.train.unit), (seal_ctx, (64, 64))):
        pub, d = secret.public(), prep.in_features
        model = Linear(d, prep.num_classes)
        model.load_state_dict({"weight": local.weight.detach(), "bias": local.bias.detach()})
        model.encrypt(pub, unit=unit)
        job = {**prep.job(), "in_features": d}
        level = input_level(pub, job, {"weight_bias": model.weight_bias.layout})
        x = prep.test[0][:8]
        packed = input_layout(8, d, unit).pack(x.double().numpy())
        vectors = [packed[0, j] for j in range(packed.shape[1])]
        for lv in (level, level - 1):
            blocks = [secret.encrypt_vectors(vectors, lv)]
            enc = EncTensor(blocks, input_layout(8, d, unit), pub)
            with et.no_grad():
                if lv == level:
                    got = secret.decrypt(model(enc))
                    tol = 1e-9 if secret is prep.secret else 1e-4
                    assert (got - local(x.double()).detach()).abs().max().item() < tol
                else:
                    with pytest.raises(DepthError):
                        model(enc)


def test_no_trained_model_yet(trained):
    workdir, prep, _, _ = trained
    with server_on(workdir) as (server, url):
        session = RemoteSession(url, TOKEN, KeyOwner(prep.secret), timeout=60)
        session.connect()  # a new session: nothing uploaded, nothing trained
        with pytest.raises(SessionError, match="no trained model yet"):
            EncryptedInference(session, prep.job(), prep.init).logits(prep.test[0][:4])


def test_feature_files(tmp_path):
    x = np.arange(12, dtype=np.float64).reshape(4, 3)
    np.savez(tmp_path / "a.npz", x=x, y=np.array([0, 1, 0, 1]))
    torch.save({"x": torch.from_numpy(x)}, tmp_path / "b.pt")
    (tmp_path / "c.csv").write_text("f0,f1,label,f2\n" + "\n".join(f"{r[0]},{r[1]},1,{r[2]}" for r in x))
    for name in ("a.npz", "b.pt", "c.csv"):
        got, y = read_features(tmp_path / name)
        assert torch.equal(got, torch.from_numpy(x)), name
        assert (y is None) == (name == "b.pt")
    np.savez(tmp_path / "bad.npz", features=x)
    (tmp_path / "nan.csv").write_text("1,2\nnan,3\n")
    for name, match in (("bad.npz", "no array named 'x'"), ("nan.csv", "NaN"), ("missing.npz", "cannot read")):
        with pytest.raises(FeatureFileError, match=match):
            read_features(tmp_path / name)
    with pytest.raises(FeatureFileError, match="unknown features file type"):
        read_features(tmp_path / "x.txt")


def test_infer_cli_refuses_a_workdir_without_a_session(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ENCRYPTED_TORCH_TOKEN", TOKEN)
    np.savez(tmp_path / "x.npz", x=np.zeros((2, 3)))
    code = infer_main(["--server", "ws://127.0.0.1:9", "--workdir", str(tmp_path / "nowhere"), str(tmp_path / "x.npz")])
    assert code == 2 and "not a training client's workdir" in capsys.readouterr().err


def test_cli_journey_train_then_infer_raw_and_normalised_features(tmp_path, monkeypatch, capsys):
    """The client CLI trains (plaintext backend), then ``infer`` classifies the workdir's normalised test set
    and the same samples' raw features (normalised with the workdir's training statistics): same logits,
    equal to the decrypted model's."""
    from encrypted_torch.client.__main__ import main as client_main
    from encrypted_torch.datasets import load_digits_features

    monkeypatch.setenv("ENCRYPTED_TORCH_TOKEN", TOKEN)
    client = tmp_path / "client"
    with server_on(tmp_path / "server") as (_, url):
        assert client_main(["--server", url, "--workdir", str(client), "--dataset", "digits", "--preset", "fast",
                            "--backend", "plain", "--batch-size", "64", "--epochs", "1", "--max-steps", "2",
                            "--out", str(tmp_path / "model.pt")]) == 0
        test = np.load(client / "test.npz")
        np.savez(tmp_path / "normalised.npz", x=test["x"][:70], y=test["y"][:70])
        np.savez(tmp_path / "raw.npz", x=load_digits_features(seed=0).test[0][:70].double().numpy())
        capsys.readouterr()
        runs = {}
        for name, extra in (("normalised", ["--normalised"]), ("raw", [])):
            out = tmp_path / f"{name}.json"
            code = infer_main(["--server", url, "--workdir", str(client), "--batch-size", "32", "--out", str(out),
                               *extra, str(tmp_path / f"{name}.npz")])
            assert code == 0, capsys.readouterr().err
            runs[name] = json.loads(out.read_text())
    weights = torch.load(tmp_path / "model.pt")
    want = torch.from_numpy(test["x"][:70]).double() @ weights["weight"].T + weights["bias"]
    for name, run in runs.items():
        got = torch.tensor(run["results"][0]["logits"], dtype=torch.float64)
        assert (got - want).abs().max().item() < 1e-6, name  # raw: normalised in float64 twice, same statistics
        assert run["results"][0]["predictions"] == want.argmax(1).tolist()
        assert run["stats"]["batches"] == 3 and run["stats"]["rows"] == 70
    assert "accuracy" in runs["normalised"]["results"][0] and len(runs["raw"]["results"][0]["classes"]) == 70


# --- SEAL, both CLIs as OS processes ----------------------------------------------------------------------------


@pytest.mark.slow  # two CLI processes, SEAL keys, one training step over the network (37 refreshes)
def test_seal_cli_train_then_infer_equals_local_inference(tmp_path):
    from test_server import _env, start_server, stop  # the server process and both CLIs share its token

    proc, port = start_server(tmp_path / "server", log=tmp_path / "server.log")
    url, client = f"ws://127.0.0.1:{port}", tmp_path / "client"
    try:
        train = subprocess.run([sys.executable, "-m", "encrypted_torch.client", "--server", url, "--workdir",
                                str(client), "--dataset", "digits", "--preset", "test", "--batch-size", "64",
                                "--epochs", "1", "--max-steps", "1", "--out", str(tmp_path / "model.pt")],
                               env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=900)
        assert train.returncode == 0, train.stderr[-2000:]
        test = np.load(client / "test.npz")
        np.savez(tmp_path / "new.npz", x=test["x"][:100], y=test["y"][:100])
        infer = subprocess.run([sys.executable, "-m", "encrypted_torch.client", "infer", "--server", url, "--workdir",
                                str(client), "--batch-size", "64", "--normalised", "--out", str(tmp_path / "pred.json"),
                                str(tmp_path / "new.npz")],
                               env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert infer.returncode == 0, infer.stderr[-2000:]
    finally:
        stop(proc)
    out = json.loads((tmp_path / "pred.json").read_text())
    weights = torch.load(tmp_path / "model.pt")
    x = torch.from_numpy(test["x"][:100]).double()
    want = x @ weights["weight"].T + weights["bias"]
    got = torch.tensor(out["results"][0]["logits"], dtype=torch.float64)
    # one product of fresh operands: x's fresh noise times |w| summed over the features, plus its rotations' key
    # switches (HETAL's DiagABT: log2 of the unit's columns and the output's) and two rescales
    tol = ckks_tolerance(get_params("test"), magnitude=float(want.abs().max()), keyswitches=16, depth=2)
    err = (got - want).abs().max().item()
    print(f"SEAL encrypted inference vs local: max |Δlogit| = {err:.3g} (tolerance {tol:.3g}); "
          f"stats {out['stats']}")
    assert err < tol
    assert out["stats"]["batches"] == 2 and out["stats"]["rows"] == 100
    assert (got.argmax(1) == want.argmax(1)).double().mean().item() >= 0.99
