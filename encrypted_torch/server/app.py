"""The training server: WebSocket connections, handshakes, and the sessions they drive.

Each connection runs in its own thread (websockets' sync server). A connection authenticates,
attaches to its session (new, or resumed by id), and serves it; any error ends that connection
only, after telling the client its type. SEAL holds the GIL, so sessions share one core.
"""

from __future__ import annotations

import dataclasses
import errno
import itertools
import logging
import selectors
import socket
import ssl
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.sync.server import Server, ServerConnection, serve

from ..errors import ContextMismatchError, EncTorchError
from ..protocol import auth
from ..protocol.channel import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_MAX_MESSAGE_BYTES,
    PREAUTH_MAX_BYTES,
    Channel,
    server_handshake,
)
from ..protocol.errors import ConnectionLostError, SessionError, peer_text
from ..protocol.messages import Welcome
from .job import BUILDERS, Builder
from .limits import ContextCache, Limits
from .session import Session

log = logging.getLogger("encrypted_torch.server")
_EXHAUSTED = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


@dataclass
class ServerConfig:
    """Where the server listens, where it keeps sessions, and its limits (docs/protocol.md lists each flag)."""

    workdir: Path
    token: bytes
    host: str = "127.0.0.1"
    port: int = 0
    resume: bool = False
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    handshake_timeout: float = 10.0  # from TCP accept to an authenticated hello
    max_connections: int = 64  # open connections, authenticated or not
    max_preauth: int = 16  # connections still in their handshake; a newer one closes the oldest
    allow_plain: bool = False  # accept plain-backend (unencrypted) contexts: tests only
    certfile: Path | None = None  # TLS (wss://) with this certificate chain and key
    keyfile: Path | None = None
    limits: Limits = field(default_factory=Limits)


class SessionStore:
    """Sessions by id, kept under ``workdir/sessions``; ``resume`` reloads the ones on disk."""

    def __init__(self, workdir: Path, resume: bool, limits: Limits, builders: dict[str, Builder]) -> None:
        self.root = Path(workdir) / "sessions"
        self.root.mkdir(parents=True, exist_ok=True)
        self.limits, self.builders = limits, builders
        self.contexts = ContextCache(limits.max_loaded_contexts)
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}
        existing = sorted(d for d in self.root.iterdir() if d.is_dir())
        if existing and not resume:
            raise SessionError(f"{self.root} holds {len(existing)} session(s); pass --resume to continue them "
                               "or choose an empty workdir")
        for d in existing:
            try:
                self._sessions[d.name] = Session.load(d, limits, builders, **self._shared())
            except (EncTorchError, OSError) as err:
                log.error("skipping %s: %s", d, err)

    def _shared(self) -> dict[str, Any]:
        return {"contexts": self.contexts, "total_bytes": self.total_bytes}

    def __len__(self) -> int:
        return len(self._sessions)

    def total_bytes(self) -> int:
        """What all sessions store (each session's count is refreshed when it uploads)."""
        return sum(s.disk_bytes for s in list(self._sessions.values()))

    def create(self) -> Session:
        with self._lock:
            if len(self._sessions) >= self.limits.max_sessions:
                raise SessionError(f"this server holds {len(self._sessions)} sessions, its limit; the operator can "
                                   "remove finished sessions' directories or raise --max-sessions")
            session = Session.create(self.root, self.limits, self.builders, **self._shared())
            self._sessions[session.id] = session
            return session

    def get(self, session_id: str) -> Session:
        with self._lock:
            if session_id not in self._sessions:
                raise SessionError(f"unknown session {session_id[:8]}…")
            return self._sessions[session_id]

class TrainingServer:
    """``python -m encrypted_torch.server``'s server, usable in-process (tests, embedding).

    Its own accept loop admits at most ``max_connections`` connections and ``max_preauth`` of them
    in their handshake (a newer stranger closes the oldest one, so idle strangers cannot lock
    clients out), survives running out of file descriptors, and never exits until ``shutdown``.

    >>> server = TrainingServer(ServerConfig(Path("work"), token))   # doctest: +SKIP
    >>> port = server.start(); ...; server.shutdown()                # doctest: +SKIP
    """

    def __init__(self, config: ServerConfig, builders: dict[str, Builder] | None = None) -> None:
        self.config = config
        self.token = auth.check_token(config.token)
        limits = dataclasses.replace(config.limits, allow_plain=config.allow_plain or config.limits.allow_plain)
        self.sessions = SessionStore(config.workdir, config.resume, limits, builders or dict(BUILDERS))
        self._ssl = _server_ssl(config)
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._conn_lock = threading.Lock()
        self._conns: dict[int, socket.socket] = {}
        self._preauth: OrderedDict[int, socket.socket] = OrderedDict()
        self._ids = itertools.count()
        self._local = threading.local()
        self.refused = 0  # connections closed at accept (caps) or evicted in their handshake

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the server is not started")
        return self._server.socket.getsockname()[1]

    def connection_counts(self) -> dict[str, int]:
        with self._conn_lock:
            return {"open": len(self._conns), "preauth": len(self._preauth), "refused": self.refused}

    def start(self) -> int:
        """Bind and serve in a background thread; returns the port."""
        cfg = self.config
        self._server = serve(self._handle, cfg.host, cfg.port, max_size=PREAUTH_MAX_BYTES, ssl=self._ssl,
                             max_queue=4, compression=None, ping_interval=20, ping_timeout=120,
                             open_timeout=cfg.handshake_timeout, logger=_peer_safe_logger())
        self._server.socket.setblocking(False)
        self._thread = threading.Thread(target=self._accept_loop, name="et-server", daemon=True)
        self._thread.start()
        log.info("listening on %s:%d (%s), %d session(s) on disk", cfg.host, self.port,
                 "TLS" if self._ssl else "no TLS", len(self.sessions))
        return self.port

    def serve_forever(self) -> None:
        self.start()
        assert self._thread is not None
        self._thread.join()

    def shutdown(self) -> None:
        self._stopping.set()
        with self._conn_lock:  # strangers in their handshake would hold shutdown() up to handshake_timeout
            while self._preauth:
                self._evict_oldest_locked()
        if self._server is not None:
            self._server.shutdown()  # closes the socket, wakes the accept loop, closes connections
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _accept_loop(self) -> None:
        """websockets' serve_forever, supervised: resource errors and surprises are logged, never fatal."""
        srv = self._server
        assert srv is not None
        poller = selectors.DefaultSelector()
        try:
            poller.register(srv.socket, selectors.EVENT_READ)
            poller.register(srv.shutdown_watcher, selectors.EVENT_READ)
            last_report = 0.0
            while not self._stopping.is_set():
                try:
                    poller.select(1.0)
                    if self._stopping.is_set() or srv.socket.fileno() == -1:
                        break
                    try:
                        sock, addr = srv.socket.accept()
                    except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                        continue
                    except OSError as err:
                        if err.errno not in _EXHAUSTED:
                            raise
                        if time.monotonic() - last_report > 10:
                            log.error("accept: %s; closing the oldest handshaking connection and retrying", err)
                            last_report = time.monotonic()
                        self._evict_oldest()
                        time.sleep(0.05)
                        continue
                    self._admit(srv, sock, addr)
                except Exception:  # the accept loop must outlive anything one connection does
                    if self._stopping.is_set() or srv.socket.fileno() == -1:
                        break
                    log.exception("accept loop: unexpected error; continuing")
                    time.sleep(0.5)
        finally:
            poller.close()
            srv.socket_closed.set()
            srv.shutdown_watcher.close()

    def _admit(self, srv: Server, sock: socket.socket, addr: Any) -> None:
        cfg = self.config
        with self._conn_lock:
            if len(self._preauth) >= cfg.max_preauth or len(self._conns) >= cfg.max_connections:
                if not self._preauth:  # every slot holds an authenticated client: refuse the newcomer
                    self.refused += 1
                    _close(sock)
                    return
                self._evict_oldest_locked()
            cid = next(self._ids)
            self._conns[cid] = self._preauth[cid] = sock
        sock.settimeout(None)
        thread = threading.Thread(target=self._run_connection, args=(srv, sock, addr, cid), daemon=True,
                                  name=f"et-conn-{cid}")
        with srv.lock:  # registered before it starts, as serve_forever does, so shutdown() joins it
            srv.handler_threads.add(thread)
        thread.start()

    def _run_connection(self, srv: Server, sock: socket.socket, addr: Any, cid: int) -> None:
        self._local.cid = cid
        try:
            srv.handler(sock, addr)  # websockets' per-connection handler: handshake, then self._handle
        finally:
            with self._conn_lock:
                self._conns.pop(cid, None)
                self._preauth.pop(cid, None)

    def _evict_oldest(self) -> None:
        with self._conn_lock:
            self._evict_oldest_locked()

    def _evict_oldest_locked(self) -> None:
        if self._preauth:
            cid, sock = self._preauth.popitem(last=False)
            self._conns.pop(cid, None)
            self.refused += 1
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes its thread, which closes it
            except OSError:
                pass

    def _authenticated(self) -> None:
        with self._conn_lock:
            self._preauth.pop(getattr(self._local, "cid", -1), None)

    def _handle(self, ws: ServerConnection) -> None:
        peer = ws.remote_address
        channel: Channel | None = None
        try:
            channel, hello = server_handshake(ws, self.token, self.config.max_message_bytes,
                                              self.config.chunk_bytes, self.config.handshake_timeout)
            self._authenticated()
            session = self._session_for(hello.session_id, hello.fingerprint)
            generation = session.attach(channel)
            try:
                channel.send(Welcome(session.id, session.status()))
                log.info("%s: session %s attached (%s)", peer, session.id[:8], session.record["stage"])
                session.serve(channel, generation)
                channel.close(1000, "bye")
            finally:
                session.detach()
        except ConnectionLostError as err:
            self._log(logging.INFO, peer, channel, err)
        except EncTorchError as err:
            self._log(logging.WARNING, peer, channel, err)
            (channel or Channel(ws)).fail(err)
        except Exception as err:  # one broken session must not take the server down
            log.exception("%s: unexpected error", peer)
            (channel or Channel(ws)).fail(err)

    @staticmethod
    def _log(level: int, peer: Any, channel: Channel | None, err: BaseException) -> None:
        """Before authentication only the error's type is logged: its text may be a stranger's."""
        if channel is None:
            log.log(level, "%s: refused before authentication: %s", peer, type(err).__name__)
        else:
            log.log(level, "%s: %s: %s", peer, type(err).__name__, peer_text(err, 1000))

    def _session_for(self, session_id: str, fingerprint: str) -> Session:
        if not session_id:
            return self.sessions.create()
        session = self.sessions.get(session_id)
        if session.fingerprint is not None and fingerprint != session.fingerprint:
            raise ContextMismatchError("this session belongs to another key owner (public-key fingerprint differs)")
        return session


def _server_ssl(config: ServerConfig) -> ssl.SSLContext | None:
    if config.certfile is None and config.keyfile is None:
        return None
    if config.certfile is None:
        raise SessionError("TLS needs --certfile as well as --keyfile")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(config.certfile, config.keyfile)
    except (OSError, ssl.SSLError) as err:
        raise SessionError(f"cannot load the TLS certificate {config.certfile}: {err}") from None
    return ctx


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


class _PeerSafe(logging.Filter):
    """websockets' own log lines quote what peers sent (HTTP lines, close reasons): one escaped line each."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            text += f" ({type(exc).__name__}: {exc})"
            record.exc_info, record.exc_text = None, None
        record.msg, record.args = peer_text(text, 500), None
        return True


def _peer_safe_logger() -> logging.Logger:
    logger = logging.getLogger("encrypted_torch.server.websockets")
    if not any(isinstance(f, _PeerSafe) for f in logger.filters):
        logger.addFilter(_PeerSafe())
    return logger
