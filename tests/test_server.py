"""Client and server as separate parties: sessions, hostile input, reconnects, SIGKILL + resume, isolation.

In-process tests run the server in a thread (plaintext backend: exact, fast); the end-to-end
tests run it as its own OS process on loopback. The toy job (tests/test_storage.py) needs only
elementwise ops; the HETAL digits tests need encrypted_torch.functional and linalg.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from test_storage import TOY_JOB, build_toy, toy_data, toy_reference
from websockets.sync.client import connect

import encrypted_torch as et
from encrypted_torch.ckks import serialize
from encrypted_torch.client import KeyOwner
from encrypted_torch.client.remote import RemoteSession, RetryPolicy
from encrypted_torch.errors import EncTorchError
from encrypted_torch.protocol import (
    AuthenticationError,
    ConnectionLostError,
    MessageTooLargeError,
    ProtocolError,
    RemoteError,
    SessionError,
    client_handshake,
)
from encrypted_torch.protocol.messages import FileBegin, FileChunk, RefreshReply
from encrypted_torch.server import BUILDERS, Limits, ServerConfig, TrainingServer
from encrypted_torch.storage import WrongKeyError
from encrypted_torch.training import EarlyStopping

TOKEN = "loopback-test-token-0123456789"
ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
TOY_BUILDERS = {**BUILDERS, "toy": build_toy}
SEAL_TOY_TOL = 1e-4  # toy run over SEAL: fresh encryptions and refreshes differ; measured ≤ 2e-6


def _has_training_ops() -> bool:
    try:
        from encrypted_torch.functional import cross_entropy, softmax_rotation_steps  # noqa: F401
        from encrypted_torch.linalg.steps import hetal_rotation_steps  # noqa: F401
    except ImportError:
        return False
    return callable(cross_entropy)


needs_training_ops = pytest.mark.skipif(not _has_training_ops(), reason="needs encrypted_torch.functional/linalg")


@contextlib.contextmanager
def running_server(workdir: Path, builders=None, **config):
    limits = Limits(idle_timeout=60, reply_timeout=60, attach_timeout=30)
    config = {"allow_plain": True, **config}  # the plaintext backend: exact and fast, refused by default
    server = TrainingServer(ServerConfig(workdir, TOKEN.encode(), limits=limits, **config), builders or TOY_BUILDERS)
    port = server.start()
    try:
        yield server, f"ws://127.0.0.1:{port}"
    finally:
        server.shutdown()


def run_toy(url: str, secret: et.SecretContext, *, seed: int = 0, on_progress=None, retry=None):
    owner, train, val, init = toy_data(secret, seed)
    session = RemoteSession(url, TOKEN, owner, on_progress=on_progress, timeout=60,
                            retry=retry or RetryPolicy(attempts=20, deadline=60))
    session.connect()
    session.upload(train, val)
    summary = session.train(TOY_JOB, init, builders=TOY_BUILDERS)
    weights = secret.decrypt(session.fetch_model()["w"])
    session.close()
    return weights, session, summary


@pytest.fixture(scope="module")
def other_plain() -> et.SecretContext:
    return et.SecretContext.create("test", backend="plain")


# --- in-process server -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["plain", "seal"])
def test_toy_run_over_the_network_equals_the_in_process_run(tmp_path, plain_ctx, seal_ctx, backend):
    secret = plain_ctx if backend == "plain" else seal_ctx
    with running_server(tmp_path) as (server, url):
        got, session, summary = run_toy(url, secret)
    want = toy_reference(secret)
    if backend == "plain":
        assert torch.equal(got, want)
    else:
        assert (got - want).abs().max() < SEAL_TOY_TOL
    assert summary["steps"] == 12 and summary["epochs_run"] == 3 and summary["resumed_from"] is None
    assert summary["key_owner_round_trips"] > 12 and summary["refreshes_per_step"] > 0
    assert [h["epoch"] for h in session.key_owner.history] == [0, 1, 2]
    record = json.loads((tmp_path / "sessions" / session.session_id / "session.json").read_text())
    assert record["stage"] == "done" and record["fingerprint"] == secret.fingerprint


def test_server_refuses_a_secret_key_and_keeps_serving(tmp_path, plain_ctx, seal_ctx):
    with running_server(tmp_path) as (server, url):
        session = RemoteSession(url, TOKEN, KeyOwner(seal_ctx))
        session.connect()
        with pytest.raises(et.KeyRoleError, match="refuses a secret key"):
            session._send_file("public_context", seal_ctx.to_bytes())
        with pytest.raises(ConnectionLostError):
            session.channel.recv(5)
        assert not any(tmp_path.glob("sessions/*/public_context.et"))
        assert not any(p for p in tmp_path.rglob("*") if p.is_file() and p.name.startswith("."))
        got, _, _ = run_toy(url, plain_ctx)
    assert torch.equal(got, toy_reference(plain_ctx))


def test_wrong_token_is_refused(tmp_path, plain_ctx):
    with running_server(tmp_path) as (server, url):
        session = RemoteSession(url, "a-different-token-of-enough-length", KeyOwner(plain_ctx))
        with pytest.raises(AuthenticationError) as info:
            session.connect()
        assert isinstance(info.value, RemoteError)
        assert len(server.sessions) == 0
        assert run_toy(url, plain_ctx)[2]["steps"] == 12


@contextlib.contextmanager
def _open_raw(url: str):
    with connect(url, compression=None, max_size=None) as ws:
        channel, welcome, _ = client_handshake(ws, TOKEN.encode(), "", "", 1 << 20, timeout=10)
        yield ws, channel


HOSTILE = {
    "unsealed garbage": (lambda ws, ch: ws.send(os.urandom(500)), AuthenticationError),
    "text frame": (lambda ws, ch: ws.send("hello"), ProtocolError),
    "sealed garbage": (lambda ws, ch: ws.send(ch.sealer.seal(os.urandom(300))), et.SerializationError),
    "truncated": (lambda ws, ch: ws.send(ch.sealer.seal(FileChunk(0, b"x" * 100).encode())[:-20]),
                  AuthenticationError),
    "replayed": (lambda ws, ch: [ws.send(w) for w in [ch.sealer.seal(FileBegin("public_context", 9, "0" * 64)
                                                                      .encode())] * 2], AuthenticationError),
    "unknown type": (lambda ws, ch: ws.send(ch.sealer.seal(serialize.pack("message", {
        "type": b"launch_missiles", "meta": b"{}"}))), ProtocolError),
    "out of turn": (lambda ws, ch: ch.send(RefreshReply(0, b"")), ProtocolError),
    "chunk offset": (lambda ws, ch: [ch.send(FileBegin("public_context", 10, "0" * 64)),
                                     ch.send(FileChunk(5, b"12345"))], ProtocolError),
    "size lie": (lambda ws, ch: [ch.send(FileBegin("public_context", 10, "0" * 64)),
                                 ch.send(FileChunk(0, b"ETORCH" * 5))], ProtocolError),
    "oversized": (lambda ws, ch: ws.send(ch.sealer.seal(FileChunk(0, b"x" * (3 << 20)).encode())),
                  MessageTooLargeError),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_input_ends_only_that_connection(tmp_path, plain_ctx, case):
    send, error = HOSTILE[case]
    with running_server(tmp_path, max_message_bytes=1 << 20, chunk_bytes=1 << 18) as (server, url):
        bystander = RemoteSession(url, TOKEN, KeyOwner(plain_ctx))
        bystander.connect()
        with _open_raw(url) as (ws, channel):
            send(ws, channel)
            with pytest.raises(error):
                for _ in range(3):
                    channel.recv(10)
            with pytest.raises((ConnectionLostError, MessageTooLargeError)):
                channel.recv(10)
            assert ws.close_code in (1008, 1009)
        bystander._send_file("public_context", plain_ctx.public_bytes())  # the other session is unaffected
        bystander.close()
        assert run_toy(url, plain_ctx)[2]["steps"] == 12


def test_client_reconnects_mid_training_and_the_session_continues(tmp_path, plain_ctx):
    dropped = []

    def drop_once(progress):
        if progress.info["steps_done"] == 6 and not dropped:
            dropped.append(progress.step)
            session_ref[0]._channel.ws.close()  # as if the network failed

    session_ref: list[RemoteSession] = []
    owner, train, val, init = toy_data(plain_ctx)
    with running_server(tmp_path) as (server, url):
        session = RemoteSession(url, TOKEN, owner, on_progress=drop_once, retry=RetryPolicy(deadline=60))
        session_ref.append(session)
        session.connect()
        session.upload(train, val)
        summary = session.train(TOY_JOB, init, builders=TOY_BUILDERS)
        got = plain_ctx.decrypt(session.fetch_model()["w"])
    assert dropped and session.reconnects == 1 and summary["resumed_from"] is not None
    assert torch.equal(got, toy_reference(plain_ctx))
    assert [h["epoch"] for h in owner.history] == [0, 1, 2]


class _ClientCrash(Exception):
    pass


def test_a_restarted_client_process_resumes_from_its_saved_state(tmp_path, plain_ctx):
    """The client 'dies' mid-epoch 1; a new KeyOwner (no labels, no history) resumes from the state file."""
    state_path = tmp_path / "client" / "session_state.et"
    state_path.parent.mkdir()
    owner, train, val, init = toy_data(plain_ctx)

    def crash(progress):
        if progress.info["steps_done"] == 6:
            raise _ClientCrash

    with running_server(tmp_path / "server") as (server, url):
        first = RemoteSession(url, TOKEN, owner, state_path=state_path, on_progress=crash)
        first.connect()
        first.upload(train, val)
        with pytest.raises(_ClientCrash):
            first.train(TOY_JOB, init, builders=TOY_BUILDERS)
        reborn = KeyOwner(plain_ctx, EarlyStopping(patience=3))
        second = RemoteSession(url, TOKEN, reborn, state_path=state_path)
        assert second.session_id == first.session_id and [h["epoch"] for h in reborn.history] == [0]
        assert second.connect()["stage"] == "training"
        second.upload(train, val)  # nothing is sent again; the key owner learns the shapes it plans from
        summary = second.train(TOY_JOB, init, builders=TOY_BUILDERS)
        got = plain_ctx.decrypt(second.fetch_model()["w"])
    assert summary["resumed_from"] is not None and [h["epoch"] for h in reborn.history] == [0, 1, 2]
    assert torch.equal(got, toy_reference(plain_ctx))


def test_an_epoch_end_asked_again_is_judged_once(plain_ctx):
    """After a server rollback the same epoch end arrives twice: the verdict and history do not double count."""
    from encrypted_torch.protocol.messages import EpochEndRequest

    owner, train, val, init = toy_data(plain_ctx)
    session = RemoteSession("ws://127.0.0.1:9", TOKEN, owner)
    logits = [(b.x * init["w"]).to_bytes() for b in val]
    ask = lambda epoch: EpochEndRequest(epoch, epoch, "val", logits, {"model.w": init["w"].to_bytes()})  # noqa: E731
    first = [session._judge(ask(e)).stop for e in range(3)]  # same logits: epochs 1 and 2 do not improve
    state = owner.state_dict()
    again = [session._judge(ask(e)).stop for e in (1, 2)]  # the server resumed from a checkpoint in epoch 1
    assert first == [False, False, False] and again == [False, False]  # counted twice, patience 3 would stop
    assert [h["epoch"] for h in owner.history] == [0, 1, 2]
    assert owner.state_dict()["early_stopping"] == state["early_stopping"]


def test_concurrent_sessions_are_isolated(tmp_path, plain_ctx, other_plain):
    results: dict[str, object] = {}

    def client(name, secret, seed):
        try:
            results[name] = run_toy(url, secret, seed=seed)
        except Exception as err:  # reported below
            results[name] = err

    with running_server(tmp_path) as (server, url):
        threads = [threading.Thread(target=client, args=(n, s, seed))
                   for n, s, seed in (("a", plain_ctx, 0), ("b", other_plain, 1))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        (got_a, session_a, _), (got_b, session_b, _) = results["a"], results["b"]
        assert torch.equal(got_a, toy_reference(plain_ctx, seed=0))
        assert torch.equal(got_b, toy_reference(other_plain, seed=1))
        assert session_a.session_id != session_b.session_id
        thief = RemoteSession(url, TOKEN, KeyOwner(other_plain), session_id=session_a.session_id)
        with pytest.raises(et.ContextMismatchError, match="another key owner"):
            thief.connect()
        mixed = RemoteSession(url, TOKEN, KeyOwner(plain_ctx))
        _, theirs, val, _ = toy_data(other_plain)
        with pytest.raises(WrongKeyError, match="public key"):
            mixed.upload(theirs, val)


def test_server_restart_needs_resume_and_then_serves_finished_sessions(tmp_path, plain_ctx):
    with running_server(tmp_path) as (server, url):
        got, session, _ = run_toy(url, plain_ctx)
    with pytest.raises(SessionError, match="--resume"):
        TrainingServer(ServerConfig(tmp_path, TOKEN.encode()), TOY_BUILDERS)
    with running_server(tmp_path, resume=True) as (server, url):
        again = RemoteSession(url, TOKEN, KeyOwner(plain_ctx), session_id=session.session_id)
        assert again.connect()["stage"] == "done"
        assert again.train(TOY_JOB, {})["steps"] == 12  # resume of a finished run: just its summary
        assert torch.equal(plain_ctx.decrypt(again.fetch_model()["w"]), got)
        with pytest.raises(SessionError, match="unknown session"):
            RemoteSession(url, TOKEN, KeyOwner(plain_ctx), session_id="0" * 32).connect()


def test_server_side_code_has_no_path_to_a_secret_key():
    """The server, storage and protocol packages never import the key owner's modules."""
    import ast

    for package in ("server", "storage", "protocol"):
        for path in (ROOT / "encrypted_torch" / package).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom):
                    names = [node.module or ""] + [a.name for a in node.names]
                    assert not any(n.endswith(("secret", "SecretContext", "key_owner", "client", "seal_backend"))
                                   or n.startswith("..client") for n in names), (path, names)


# --- the server as its own OS process ------------------------------------------------------------------------


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "ENCRYPTED_TORCH_TOKEN": TOKEN}


def start_server(workdir: Path, port: int = 0, resume: bool = False, toy: bool = False,
                 log: Path | None = None) -> tuple[subprocess.Popen, int]:
    """``python -m encrypted_torch.server`` (with the toy job registered if ``toy``); waits until it listens."""
    args = ["--port", str(port), "--workdir", str(workdir)] + (["--resume"] if resume else [])
    if toy:
        code = (f"import sys; sys.path.insert(0, {str(TESTS)!r}); from test_server import TOY_BUILDERS; "
                "from encrypted_torch.server.__main__ import main; sys.exit(main(sys.argv[1:], TOY_BUILDERS))")
        cmd = [sys.executable, "-c", code, *args]
    else:
        cmd = [sys.executable, "-m", "encrypted_torch.server", *args]
    stderr = open(log or os.devnull, "ab")  # noqa: SIM115 (the child owns it)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, env=_env(), cwd=ROOT, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline()
            if "listening on" in line:
                return proc, int(line.rsplit(":", 1)[1])
        if proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"server did not start (exit {proc.poll()}); see {log}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for_checkpoint(workdir: Path, pred, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in workdir.glob("sessions/*/session.json"):
            try:
                ckpt = json.loads(record.read_text()).get("checkpoint")
            except (OSError, ValueError):
                continue
            if ckpt and pred(ckpt):
                return ckpt
        time.sleep(0.05)
    raise TimeoutError("no matching checkpoint")


def test_sigkill_mid_epoch_then_resume_gives_the_same_model(tmp_path, seal_ctx):
    """Toy job over SEAL; the server is SIGKILLed after a mid-epoch checkpoint and restarted with --resume."""
    work, log = tmp_path / "server", tmp_path / "server.log"
    proc, port = start_server(work, toy=True, log=log)
    out: dict = {}

    def slow(progress):  # the server waits for our refresh replies: slowing down keeps it mid-epoch
        time.sleep(0.3)

    def client():
        try:
            out["result"] = run_toy(f"ws://127.0.0.1:{port}", seal_ctx, on_progress=slow,
                                    retry=RetryPolicy(attempts=200, first_delay=0.1, max_delay=0.5, deadline=90))
        except Exception as err:
            out["result"] = err

    t = threading.Thread(target=client)
    t.start()
    try:
        seen = wait_for_checkpoint(work, lambda c: c["epoch"] == 1 and c["step"] >= 1)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc, _ = start_server(work, port=port, resume=True, toy=True, log=log)
        t.join(180)
    finally:
        stop(proc)
    assert not isinstance(out.get("result"), BaseException), out.get("result")
    got, session, summary = out["result"]
    assert session.reconnects >= 1 and summary["resumed_from"]["epoch"] >= seen["epoch"]
    assert summary["steps"] == 12 and [h["epoch"] for h in session.key_owner.history] == [0, 1, 2]
    assert (got - toy_reference(seal_ctx)).abs().max() < SEAL_TOY_TOL


def test_server_cli_refuses_a_used_workdir_without_resume(tmp_path):
    (tmp_path / "sessions" / ("a" * 32)).mkdir(parents=True)
    proc = subprocess.run([sys.executable, "-m", "encrypted_torch.server", "--port", "0", "--workdir",
                           str(tmp_path)], env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--resume" in proc.stderr


# --- HETAL on digits, end to end ------------------------------------------------------------------------------


def _hetal_config():
    from encrypted_torch.hetal.config import config_for

    # "fast" (7 levels): DiagABT alone needs 4, more than the "test" preset holds
    return config_for("digits", preset="fast", batch_size=64, epochs=2, max_steps=2, lr=1.0, seed=0)


@pytest.fixture(scope="module")
def hetal_reference():
    """One in-process digits run (the reference) and the prepared data its remote twins reuse."""
    from encrypted_torch.client.hetal_job import prepare_hetal, run_in_process

    prep = prepare_hetal(_hetal_config())
    fresh_owner = prep.key_owner.state_dict()
    ref_owner = KeyOwner(prep.secret, EarlyStopping(patience=prep.config.patience))
    ref_owner.load_state_dict(fresh_owner)
    model, result = run_in_process(prep, ref_owner)
    return prep, fresh_owner, model, result, ref_owner


def _hetal_tolerance(prep) -> float:
    from encrypted_torch.ckks.noise import ckks_tolerance

    # two encrypted runs of the same steps differ by CKKS noise only (fresh encryptions, refreshes),
    # carried through a few steps of matmuls and the softmax approximation
    return ckks_tolerance(prep.secret.params, magnitude=4, keyswitches=8, depth=4)


@pytest.mark.slow  # N=16384 keys (~580 MB) and ~10 s per step on 2 cores: minutes
@needs_training_ops
def test_hetal_digits_remote_equals_in_process(tmp_path, hetal_reference):
    from encrypted_torch.client.hetal_job import decrypt_linear
    from encrypted_torch.hetal.plaintext import accuracy

    prep, fresh_owner, ref_model, ref_result, ref_owner = hetal_reference
    owner = KeyOwner(prep.secret, EarlyStopping(patience=prep.config.patience))
    owner.load_state_dict(fresh_owner)
    proc, port = start_server(tmp_path / "server", log=tmp_path / "server.log")
    try:
        session = RemoteSession(f"ws://127.0.0.1:{port}", TOKEN, owner, timeout=300)
        session.connect()
        session.upload(prep.train, prep.val)
        summary = session.train(prep.job(), prep.init)
        model = decrypt_linear(session.fetch_model(), prep.secret, prep.in_features)
        session.close()
    finally:
        stop(proc)
    assert summary["steps"] == len(ref_result.steps) and summary["epochs_run"] == ref_result.epochs_run
    err = max((model.weight - ref_model.weight).abs().max().item(), (model.bias - ref_model.bias).abs().max().item())
    print(f"remote vs in-process: max |Δw| = {err:.3g} (tolerance {_hetal_tolerance(prep):.3g})")
    assert err < _hetal_tolerance(prep), err
    xte, yte = prep.test
    assert accuracy(model, xte, yte) == pytest.approx(accuracy(ref_model, xte, yte), abs=0.01)
    assert owner.best_epoch == ref_owner.best_epoch


@pytest.mark.slow
@needs_training_ops
def test_hetal_digits_cli_survives_sigkill_of_the_server(tmp_path, hetal_reference):
    """Two OS processes (server, client CLI); the server is killed mid-epoch and restarted with --resume."""
    prep, _, ref_model, _, _ = hetal_reference
    cfg = prep.config
    work, log = tmp_path / "server", tmp_path / "server.log"
    proc, port = start_server(work, log=log)
    client_cmd = [sys.executable, "-m", "encrypted_torch.client", "--server", f"ws://127.0.0.1:{port}",
                  "--workdir", str(tmp_path / "client"), "--dataset", "digits", "--preset", cfg.preset,
                  "--batch-size", str(cfg.batch_size), "--epochs", str(cfg.epochs), "--max-steps", str(cfg.max_steps),
                  "--lr", str(cfg.lr), "--seed", str(cfg.seed), "--out", str(tmp_path / "model.pt"),
                  "--report", str(tmp_path / "report.json")]
    client = subprocess.Popen(client_cmd, env=_env(), cwd=ROOT, stdout=open(tmp_path / "client.log", "w"),
                              stderr=subprocess.STDOUT)
    try:
        wait_for_checkpoint(work, lambda c: c["epoch"] == 0 and c["step"] >= 1, timeout=600)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc, _ = start_server(work, port=port, resume=True, log=log)
        assert client.wait(900) == 0, (tmp_path / "client.log").read_text()[-3000:]
    finally:
        client.kill()
        stop(proc)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["reconnects"] >= 1 and report["server"]["resumed_from"] is not None
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    err = max((state["weight"] - ref_model.weight).abs().max().item(),
              (state["bias"] - ref_model.bias).abs().max().item())
    print(f"killed + resumed vs in-process: max |Δw| = {err:.3g}; {report['server']}")
    assert err < _hetal_tolerance(prep), err


# --- load ----------------------------------------------------------------------------------------------------------


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@pytest.mark.slow
@pytest.mark.parametrize("sessions", [4])
def test_load_concurrent_sessions(tmp_path, seal_ctx, sessions, record_property):
    """Bounded: a few concurrent toy sessions over SEAL on loopback, 12 steps each, 10 minutes at most."""
    proc, port = start_server(tmp_path / "server", toy=True, log=tmp_path / "server.log")
    keys = [seal_ctx] + [et.SecretContext.create("test") for _ in range(sessions - 1)]
    out: list = [None] * sessions

    def client(i):
        try:
            out[i] = run_toy(f"ws://127.0.0.1:{port}", keys[i], seed=i)
        except EncTorchError as err:
            out[i] = err

    threads = [threading.Thread(target=client, args=(i,)) for i in range(sessions)]
    start = time.perf_counter()
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        elapsed = time.perf_counter() - start
        peak = _peak_rss_mb(proc.pid)
    finally:
        stop(proc)
    assert all(isinstance(o, tuple) for o in out), out
    steps = sum(o[2]["steps"] for o in out)
    traffic = sum(o[2]["bytes_sent"] + o[2]["bytes_received"] for o in out) / 2**20  # uploads included
    for i, (got, _, _) in enumerate(out):
        assert (got - toy_reference(keys[i], seed=i)).abs().max() < SEAL_TOY_TOL
    numbers = {"sessions": sessions, "seconds": round(elapsed, 2), "steps_per_second": round(steps / elapsed, 2),
               "traffic_mib_per_second": round(traffic / elapsed, 2), "server_peak_rss_mib": round(peak)}
    print("load test:", json.dumps(numbers))
    for k, v in numbers.items():
        record_property(k, v)
