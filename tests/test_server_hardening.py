"""The training server against hostile clients (issue #12): every test on loopback, every loop bounded.

In-process servers use the plaintext backend where keys do not matter (``allow_plain``); the
memory and file-descriptor tests run the server as its own process so they measure only it.
"""

from __future__ import annotations

import builtins
import contextlib
import datetime
import gc
import ipaddress
import logging
import os
import resource
import select
import socket
import stat
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import pytest
import torch
from test_server import TOKEN, TOY_BUILDERS, _env
from test_storage import toy_data
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from encrypted_torch.ckks import serialize
from encrypted_torch.client import KeyOwner
from encrypted_torch.client.remote import RemoteSession
from encrypted_torch.errors import KeyRoleError
from encrypted_torch.protocol import AuthenticationError, SessionError, client_handshake
from encrypted_torch.protocol import errors as protocol_errors
from encrypted_torch.protocol.errors import RemoteError
from encrypted_torch.protocol.messages import ErrorMessage, FileBegin, FileChunk, ServerHello, decode
from encrypted_torch.server import Limits, ServerConfig, TrainingServer
from encrypted_torch.server import session as session_module
from encrypted_torch.server.limits import GiB
from encrypted_torch.storage.dataset import read_manifest, verify_files

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


@contextlib.contextmanager
def server(workdir: Path, limits: Limits | None = None, **config):
    limits = limits or Limits(idle_timeout=30, reply_timeout=30, attach_timeout=10)
    srv = TrainingServer(ServerConfig(workdir, TOKEN.encode(), limits=limits, **{"allow_plain": True, **config}),
                         TOY_BUILDERS)
    port = srv.start()
    try:
        yield srv, f"ws://127.0.0.1:{port}"
    finally:
        srv.shutdown()


def server_process(workdir: Path, *args: str, log: Path, nofile: int | None = None) -> tuple[subprocess.Popen, int]:
    """``python -m encrypted_torch.server`` (optionally with a lower fd limit); waits until it listens."""
    limit = (f"import resource; h = resource.getrlimit(resource.RLIMIT_NOFILE)[1]; "
             f"resource.setrlimit(resource.RLIMIT_NOFILE, ({nofile}, h)); ") if nofile else ""
    code = ("import sys; import encrypted_torch.server.__main__ as m; " + limit + "sys.exit(m.main(sys.argv[1:]))")
    cmd = [sys.executable, "-c", code, "--port", "0", "--workdir", str(workdir), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=open(log, "ab"), env=_env(), cwd=ROOT,  # noqa: SIM115
                            text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if select.select([proc.stdout], [], [], 0.5)[0]:
            line = proc.stdout.readline()
            if "listening on" in line:
                return proc, int(line.rsplit(":", 1)[1])
    proc.kill()
    raise RuntimeError(f"server did not start; see {log}")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def welcome(url: str, secret, **kw) -> dict:
    session = RemoteSession(url, TOKEN, KeyOwner(secret), timeout=30, **kw)
    status = session.connect()
    session.close()
    return status


def open_idle(port: int, count: int, budget: float) -> list[socket.socket]:
    """Up to ``count`` TCP connections that never speak, within ``budget`` seconds."""
    socks, deadline = [], time.monotonic() + budget
    for _ in range(count):
        if time.monotonic() > deadline:
            break
        s = socket.socket()
        s.settimeout(5)
        try:
            s.connect(("127.0.0.1", port))
        except OSError:
            s.close()
            continue
        socks.append(s)
    return socks


# --- 1. connection caps, handshake timeout, supervised accept loop ----------------------------------------------


def test_a_thousand_idle_connections_do_not_lock_out_a_client(tmp_path, plain_ctx):
    want = 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2 * want + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 2 * want + 200), hard))
    threads_before = threading.active_count()
    with server(tmp_path, max_preauth=16, max_connections=64, handshake_timeout=5) as (srv, url):
        start = time.monotonic()
        idle = open_idle(srv.port, want, budget=60)
        opened = time.monotonic() - start
        try:
            time.sleep(0.5)  # let the accept loop drain the backlog
            counts = srv.connection_counts()
            assert counts["preauth"] <= 16 and counts["open"] <= 64
            assert threading.active_count() - threads_before <= 64 + 8
            t0 = time.monotonic()
            assert welcome(url, plain_ctx)["stage"] == "upload"  # served at once, not after the idle ones time out
            served = time.monotonic() - t0
        finally:
            for s in idle:
                s.close()
    print(f"{len(idle)} idle connections opened in {opened:.1f} s; caps held ({counts}); "
          f"a client got its Welcome {served:.2f} s later")
    assert len(idle) == want and served < 5


def test_idle_strangers_are_dropped_after_the_handshake_timeout(tmp_path, plain_ctx):
    with server(tmp_path, max_preauth=4, handshake_timeout=1) as (srv, url):
        idle = open_idle(srv.port, 3, budget=10)
        deadline = time.monotonic() + 10
        while srv.connection_counts()["preauth"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert srv.connection_counts()["preauth"] == 0
        assert all(s.recv(1) == b"" for s in idle)  # closed by the server
        for s in idle:
            s.close()
        assert welcome(url, plain_ctx)["stage"] == "upload"


def test_accept_loop_survives_running_out_of_file_descriptors(tmp_path, plain_ctx):
    """Caps lifted so the server hits EMFILE; once the strangers leave it serves again."""
    log = tmp_path / "server.log"
    proc, port = server_process(tmp_path / "w", "--allow-plain-backend", "--max-preauth", "5000",
                                "--max-connections", "5000", "--handshake-timeout", "60", log=log, nofile=256)
    try:
        idle = open_idle(port, 400, budget=30)
        time.sleep(1.0)
        for s in idle:
            s.close()
        status, deadline = None, time.monotonic() + 30
        while status is None and time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                status = welcome(f"ws://127.0.0.1:{port}", plain_ctx)
            time.sleep(0.2)
        assert proc.poll() is None
    finally:
        stop(proc)
    text = log.read_text()
    assert "Too many open files" in text, text[-2000:]
    assert status is not None and status["stage"] == "upload"


# --- 2. small frames until authenticated ---------------------------------------------------------------------


def test_a_preauth_megabyte_frame_is_refused_before_it_is_buffered(tmp_path):
    log = tmp_path / "server.log"
    proc, port = server_process(tmp_path / "w", log=log)
    try:
        time.sleep(1.0)
        before = rss_bytes(proc.pid)
        codes = []
        for _ in range(16):  # 16 MiB sent in all
            with connect(f"ws://127.0.0.1:{port}", max_size=None, compression=None, open_timeout=10) as ws:
                assert isinstance(decode(ws.recv(10)), ServerHello)
                with contextlib.suppress(ConnectionClosed, OSError):
                    ws.send(os.urandom(1 << 20))
                with contextlib.suppress(ConnectionClosed, TimeoutError):
                    ws.recv(10)
                codes.append(ws.close_code)
        time.sleep(0.5)
        grown = rss_bytes(proc.pid) - before
    finally:
        stop(proc)
    print(f"server RSS grew {grown / 2**20:.2f} MiB after 16 pre-auth 1 MiB frames; close codes {set(codes)}")
    assert set(codes) <= {1009, 1006} and 1009 in codes
    assert grown < 4 << 20


def test_an_authenticated_client_may_send_large_messages(tmp_path, plain_ctx):
    with server(tmp_path, max_message_bytes=4 << 20, chunk_bytes=2 << 20) as (srv, url):
        session = RemoteSession(url, TOKEN, KeyOwner(plain_ctx), timeout=30)
        session.connect()
        session._send_file("public_context", plain_ctx.public_bytes())
        session.channel.send(FileBegin("dataset/train/x", 3 << 20, "0" * 64))  # 3 MiB chunk after auth: parsed
        with pytest.raises(protocol_errors.ProtocolError, match="no upload is open"):
            session.channel.recv(10)


# --- 3. keys leave memory when a session ends -----------------------------------------------------------------


def test_a_finished_sessions_keys_are_unloaded(tmp_path, seal_ctx):
    limits = Limits(idle_timeout=30, reply_timeout=30, attach_timeout=10, max_loaded_contexts=1)
    with server(tmp_path, limits=limits) as (srv, url):
        refs = []
        for _ in range(3):
            session = RemoteSession(url, TOKEN, KeyOwner(seal_ctx), timeout=30)
            session.connect()
            session._send_file("public_context", seal_ctx.public_bytes())
            held = srv.sessions.get(session.session_id)
            refs.append(weakref.ref(held._ctx))
            session.close()
            deadline = time.monotonic() + 10
            while held._ctx is not None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert held._ctx is None
        gc.collect()
        assert len(srv.sessions.contexts) == 1
        assert [r() is None for r in refs] == [True, True, False]  # only the last one stays (LRU of 1)


@pytest.mark.slow  # four 53 MB test-preset contexts through a server process: ~20 s
def test_server_rss_returns_to_baseline_after_sessions_end(tmp_path, seal_ctx):
    log = tmp_path / "server.log"
    keep = os.environ.get("ET_TEST_KEEP_CONTEXTS", "0")  # set it to 10 to see the RSS of a server that keeps them
    proc, port = server_process(tmp_path / "w", "--max-loaded-contexts", keep, log=log)
    url, public = f"ws://127.0.0.1:{port}", seal_ctx.public_bytes()
    samples = []
    try:
        samples.append(rss_bytes(proc.pid))
        for _ in range(int(os.environ.get("ET_TEST_SESSIONS", "4"))):
            session = RemoteSession(url, TOKEN, KeyOwner(seal_ctx), timeout=60)
            session.connect()
            session._send_file("public_context", public)
            session.close()
            lows = []
            for _ in range(15):  # the server unloads on detach: the lowest of 3 s of samples
                time.sleep(0.2)
                lows.append(rss_bytes(proc.pid))
            samples.append(min(lows))
    finally:
        stop(proc)
    mib = [round(s / 2**20) for s in samples]
    print(f"server RSS (MiB): start {mib[0]}, after each session {mib[1:]} (context: {len(public) >> 20} MiB)")
    warm = samples[1]  # after one session: the allocator's pools are warm
    assert all(abs(s - warm) <= 0.10 * warm for s in samples[2:]), mib
    assert samples[-1] - warm < len(public)  # contexts never accumulate (kept, 3 more would add ~3 × 80 MiB)


# --- 4. upload sizes and quotas ------------------------------------------------------------------------------


def _open(url: str, secret) -> RemoteSession:
    session = RemoteSession(url, TOKEN, KeyOwner(secret), timeout=30)
    session.connect()
    return session


def test_a_context_larger_than_its_parameters_need_is_refused(tmp_path, seal_ctx):
    data = seal_ctx.public_bytes()
    with server(tmp_path) as (srv, url):
        session = _open(url, seal_ctx)
        session.channel.send(FileBegin("public_context", 1 << 34, "0" * 64))
        session.channel.send(FileChunk(0, data[: 1 << 20]))
        with pytest.raises(SessionError, match="its parameters can need"):
            session.channel.recv(10)
        assert not list((tmp_path / "sessions" / session.session_id).glob("*.et*"))


def test_quotas_name_their_flag(tmp_path, plain_ctx):
    limits = Limits(idle_timeout=30, reply_timeout=30, attach_timeout=10, max_sessions=2,
                    max_session_bytes=1 << 20, max_total_bytes=1 * GiB)
    with server(tmp_path, limits=limits) as (srv, url):
        session = _open(url, plain_ctx)
        session.channel.send(FileBegin("public_context", 2 << 20, "0" * 64))
        with pytest.raises(SessionError, match="--max-session-gb"):
            session.channel.recv(10)
        welcome(url, plain_ctx)
        with pytest.raises(SessionError, match="--max-sessions"):
            welcome(url, plain_ctx)
    limits = Limits(idle_timeout=30, reply_timeout=30, attach_timeout=10, max_total_bytes=100)
    with server(tmp_path / "b", limits=limits) as (srv, url):
        session = _open(url, plain_ctx)
        session.channel.send(FileBegin("public_context", 422, "0" * 64))
        with pytest.raises(SessionError, match="--max-disk-gb"):
            session.channel.recv(10)


def test_a_manifest_declaring_oversized_files_is_refused(tmp_path, plain_ctx):
    owner, train, val, init = toy_data(plain_ctx)
    from encrypted_torch.protocol.messages import DatasetBegin
    from encrypted_torch.storage.dataset import write_dataset

    write_dataset(train, tmp_path / "train")
    manifest = read_manifest(tmp_path / "train").to_json()
    manifest["batches"][0]["x"]["bytes"] = 1 << 36
    with server(tmp_path / "srv") as (srv, url):
        session = _open(url, plain_ctx)
        session._send_file("public_context", plain_ctx.public_bytes())
        session.channel.send(DatasetBegin("train", manifest))
        with pytest.raises(SessionError, match="rows of its shape can need"):
            session.channel.recv(10)


# --- 5. peer text in logs, the remote error cache --------------------------------------------------------------


def test_peer_text_never_forges_log_lines(tmp_path, plain_ctx, caplog):
    caplog.set_level(logging.INFO, logger="encrypted_torch.server")
    before = dict(protocol_errors._REMOTE_CLASSES)
    with server(tmp_path) as (srv, url):
        for i in range(20):  # before authentication: a made-up error class, a forged line
            with connect(url, max_size=None, compression=None) as ws:
                ws.recv(10)
                ws.send(ErrorMessage(f"Bogus{i}Error", "x\n2026-01-01 INFO FORGED by a stranger").encode())
                with contextlib.suppress(ConnectionClosed, TimeoutError):
                    ws.recv(5)
        with connect(url, max_size=None, compression=None) as ws:  # after: the text is escaped
            channel, _, _ = client_handshake(ws, TOKEN.encode(), "", "", 1 << 20, timeout=10)
            channel.send(ErrorMessage("KeyRoleError", "y\nFORGED-AFTER\x1b[31m"))
            with contextlib.suppress(Exception):
                channel.recv(5)
        time.sleep(0.5)
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("encrypted_torch.server")]
    assert not any("FORGED by a stranger" in m for m in messages)
    assert not any("\n" in m or "\x1b" in m for m in messages)
    assert any("FORGED-AFTER" in m and "\\n" in m for m in messages)
    assert protocol_errors._REMOTE_CLASSES.keys() - before.keys() <= {"KeyRoleError"}
    assert isinstance(protocol_errors.remote_error("KeyRoleError", "m"), KeyRoleError)
    assert type(protocol_errors.remote_error("NoSuch\nError", "m")) is protocol_errors.RemoteError


# --- 6. a secret key never touches the disk -------------------------------------------------------------------


def test_a_secret_key_upload_creates_no_file(tmp_path, seal_ctx, monkeypatch):
    opened: list[str] = []

    def spy(file, *args, **kw):
        opened.append(str(file))
        return builtins.open(file, *args, **kw)

    monkeypatch.setattr(session_module, "open", spy, raising=False)
    secret = seal_ctx.to_bytes()
    assert serialize.unpack(secret, "secret_context")
    with server(tmp_path) as (srv, url):
        session = _open(url, seal_ctx)
        with pytest.raises(KeyRoleError):
            session._send_file("public_context", secret)
        sdir = tmp_path / "sessions" / session.session_id
        assert sorted(p.name for p in sdir.iterdir()) == ["session.json"]
        assert opened == []
        assert welcome(url, seal_ctx)["stage"] == "upload"  # and the server keeps serving


# --- 7. damaged datasets are found on resume and can be uploaded again --------------------------------------------


def test_a_damaged_dataset_is_found_on_resume_and_uploaded_again(tmp_path, plain_ctx):
    owner, train, val, init = toy_data(plain_ctx)
    with server(tmp_path) as (srv, url):
        session = RemoteSession(url, TOKEN, owner, timeout=30)
        session.connect()
        session.upload(train, val)
        session.close()
        sid = session.session_id
    batch = tmp_path / "sessions" / sid / "data" / "train" / "batch-000001-x.et"
    raw = bytearray(batch.read_bytes())
    raw[len(raw) // 2] ^= 0x40  # same size: only a checksum finds it
    batch.write_bytes(bytes(raw))
    with server(tmp_path, resume=True) as (srv, url):
        again = RemoteSession(url, TOKEN, owner, session_id=sid, timeout=30)
        status = again.connect()
        assert status["have"] == {"public_context": True, "train": False, "val": True, "job": False}
        assert (tmp_path / "sessions" / sid / "data" / "train.damaged").is_dir()
        again.upload(train, val)
        again.close()
        assert welcome(url, plain_ctx, session_id=sid)["have"]["train"] is True
    verify_files(tmp_path / "sessions" / sid / "data" / "train")
    assert not (tmp_path / "sessions" / sid / "data" / "train.damaged").exists()


class _Crash(Exception):
    pass


def test_a_dataset_damaged_mid_training_is_uploaded_again_and_training_resumes(tmp_path, plain_ctx):
    """Training stops mid-epoch, a batch file rots on the server's disk; after a restart the client
    re-uploads it (the same manifest) and the resumed run ends with the uninterrupted run's weights."""
    from test_storage import TOY_JOB, toy_reference

    owner, train, val, init = toy_data(plain_ctx)

    def crash(progress):
        if progress.info["steps_done"] == 6:
            raise _Crash

    with server(tmp_path) as (srv, url):
        first = RemoteSession(url, TOKEN, owner, timeout=30, on_progress=crash)
        first.connect()
        first.upload(train, val)
        with pytest.raises(_Crash):
            first.train(TOY_JOB, init, builders=TOY_BUILDERS)
        sid = first.session_id
    batch = tmp_path / "sessions" / sid / "data" / "train" / "batch-000002-x.et"
    raw = bytearray(batch.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    batch.write_bytes(bytes(raw))
    with server(tmp_path, resume=True) as (srv, url):
        again = RemoteSession(url, TOKEN, owner, session_id=sid, timeout=30)
        status = again.connect()
        assert status["stage"] == "training" and status["have"]["train"] is False
        again.upload(train, val)
        again.train(TOY_JOB, init, builders=TOY_BUILDERS)
        got = plain_ctx.decrypt(again.fetch_model()["w"])
        again.close()
    assert torch.equal(got, toy_reference(plain_ctx))


def test_an_upload_that_disagrees_with_its_manifest_is_refused(tmp_path, plain_ctx):
    """A file announced with another size or sha256 than the manifest's, or whose bytes differ from
    what it announced, is refused before the dataset can complete."""
    from encrypted_torch.protocol.messages import Ack, DatasetBegin, FileEnd
    from encrypted_torch.storage.dataset import write_dataset

    owner, train, val, init = toy_data(plain_ctx)
    manifest = write_dataset(train, tmp_path / "train")
    entry = manifest.files()[0]
    data = (tmp_path / "train" / entry.file).read_bytes()
    cases = {"size": (entry.bytes + 1, entry.sha256, data), "sha256": (entry.bytes, "0" * 64, data),
             "bytes": (entry.bytes, entry.sha256, bytes([data[0] ^ 1]) + data[1:])}
    with server(tmp_path / "srv") as (srv, url):
        for case, (size, digest, payload) in cases.items():
            session = RemoteSession(url, TOKEN, KeyOwner(plain_ctx), timeout=30)
            session.connect()
            session._send_file("public_context", plain_ctx.public_bytes())
            session.channel.send(DatasetBegin("train", manifest.to_json()))
            session.channel.expect(Ack, 30)
            session.channel.send(FileBegin(f"dataset/train/{entry.file}", size, digest))
            with pytest.raises(RemoteError, match="manifest|sha256|differs") as caught:
                session.channel.send(FileChunk(0, payload[:size]))
                session.channel.send(FileEnd(f"dataset/train/{entry.file}"))
                session.channel.expect(Ack, 30)
            assert ("ManifestError" if case != "bytes" else "ChecksumError") in str(caught.value), case


def test_a_stale_refresh_reply_is_refused(tmp_path, plain_ctx):
    """A client whose 'refresh' hands back the ciphertexts unchanged (not fresh): the server refuses the
    reply instead of training on operands out of levels."""
    from test_adversarial import JOB, client_data

    from encrypted_torch.ckks import cipher_codec

    class StaleOwner(KeyOwner):  # the wire's refresh: records and bytes of the ciphertexts as they came
        def refresh_payloads(self, ciphers, stage="", level=None, seeded=True):
            return cipher_codec.dump(self.public_context, ciphers)

    owner, train, val, init, _ = client_data(secret=plain_ctx)
    stale = StaleOwner(plain_ctx)
    stale.load_state_dict(owner.state_dict())
    stale.num_classes = owner.num_classes
    with server(tmp_path) as (srv, url):
        session = RemoteSession(url, TOKEN, stale, timeout=30)
        session.connect()
        session.upload(train, val)
        with pytest.raises(RemoteError, match="not at the asked level"):
            session.train({**JOB, "epochs": 1}, init)


# --- 8. plaintext contexts only with an explicit flag -------------------------------------------------------------


def test_plain_backend_contexts_are_refused_by_default(tmp_path, plain_ctx):
    with server(tmp_path, allow_plain=False) as (srv, url):
        session = _open(url, plain_ctx)
        with pytest.raises(SessionError, match="--allow-plain-backend"):
            session._send_file("public_context", plain_ctx.public_bytes())
        assert not (tmp_path / "sessions" / session.session_id / "public_context.et").exists()


# --- 9. the client's workdir is private ---------------------------------------------------------------------------


def test_client_workdir_and_files_are_private(tmp_path, plain_ctx, monkeypatch):
    import types

    import torch

    import encrypted_torch.client.__main__ as client_main

    owner, train, val, init = toy_data(plain_ctx)
    prep = types.SimpleNamespace(secret=plain_ctx, key_owner=owner, train=train, val=val, init=init,
                                 test=(torch.zeros(4, 8), torch.zeros(4)), in_features=8,
                                 job=lambda every: {"model": "toy", "checkpoint_every": every})
    monkeypatch.setattr(client_main, "prepare_hetal", lambda cfg, **_: prep)
    monkeypatch.setenv("ENCRYPTED_TORCH_TOKEN", TOKEN)
    with socket.socket() as s:  # a port nobody listens on: the client stops after preparing its workdir
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    work = tmp_path / "client"
    assert client_main.main(["--server", f"ws://127.0.0.1:{port}", "--workdir", str(work)]) == 2
    assert stat.S_IMODE(work.stat().st_mode) == 0o700
    written = [p for p in work.rglob("*")]
    assert {"secret_context.et", "test.npz", "client.json"} <= {p.name for p in written}
    for p in written:
        assert stat.S_IMODE(p.stat().st_mode) == (0o700 if p.is_dir() else 0o600), p


# --- 10. TLS ------------------------------------------------------------------------------------------------------


def _self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "encrypted_torch test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    certfile, keyfile = directory / "cert.pem", directory / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return certfile, keyfile


def test_tls_with_the_right_ca_connects_and_without_it_fails(tmp_path, plain_ctx):
    pytest.importorskip("cryptography")
    certfile, keyfile = _self_signed(tmp_path)
    with server(tmp_path / "srv", certfile=certfile, keyfile=keyfile) as (srv, url):
        tls_url = url.replace("ws://", "wss://")
        assert welcome(tls_url, plain_ctx, cafile=certfile)["stage"] == "upload"
        with pytest.raises(AuthenticationError, match="--cafile"):
            welcome(tls_url, plain_ctx)
        with pytest.raises(Exception):  # noqa: B017 (plain ws:// to a TLS port: any failure, never a session)
            welcome(url, plain_ctx)
        assert welcome(tls_url, plain_ctx, cafile=certfile)["stage"] == "upload"  # still serving
