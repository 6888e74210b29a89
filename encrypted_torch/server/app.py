"""The training server: WebSocket connections, handshakes, and the sessions they drive.

Each connection runs in its own thread (websockets' sync server). A connection authenticates,
attaches to its session (new, or resumed by id), and serves it; any error ends that connection
only, after telling the client its type. SEAL holds the GIL, so sessions share one core.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from websockets.sync.server import Server, ServerConnection, serve

from ..errors import ContextMismatchError, EncTorchError
from ..protocol import auth
from ..protocol.channel import DEFAULT_CHUNK_BYTES, DEFAULT_MAX_MESSAGE_BYTES, Channel, server_handshake
from ..protocol.errors import ConnectionLostError, SessionError
from ..protocol.messages import Welcome
from .job import BUILDERS, Builder
from .session import Limits, Session

log = logging.getLogger("encrypted_torch.server")


@dataclass
class ServerConfig:
    """Where the server listens, where it keeps sessions, and its limits."""

    workdir: Path
    token: bytes
    host: str = "127.0.0.1"
    port: int = 0
    resume: bool = False
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    handshake_timeout: float = 30.0
    limits: Limits = field(default_factory=Limits)


class SessionStore:
    """Sessions by id, kept under ``workdir/sessions``; ``resume`` reloads the ones on disk."""

    def __init__(self, workdir: Path, resume: bool, limits: Limits, builders: dict[str, Builder]) -> None:
        self.root = Path(workdir) / "sessions"
        self.root.mkdir(parents=True, exist_ok=True)
        self.limits, self.builders = limits, builders
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}
        existing = sorted(d for d in self.root.iterdir() if d.is_dir())
        if existing and not resume:
            raise SessionError(f"{self.root} holds {len(existing)} session(s); pass --resume to continue them "
                               "or choose an empty workdir")
        for d in existing:
            try:
                self._sessions[d.name] = Session.load(d, limits, builders)
            except (EncTorchError, OSError) as err:
                log.error("skipping %s: %s", d, err)

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self) -> Session:
        with self._lock:
            session = Session.create(self.root, self.limits, self.builders)
            self._sessions[session.id] = session
            return session

    def get(self, session_id: str) -> Session:
        with self._lock:
            if session_id not in self._sessions:
                raise SessionError(f"unknown session {session_id[:8]}…")
            return self._sessions[session_id]


class TrainingServer:
    """``python -m encrypted_torch.server``'s server, usable in-process (tests, embedding).

    >>> server = TrainingServer(ServerConfig(Path("work"), token))   # doctest: +SKIP
    >>> port = server.start(); ...; server.shutdown()                # doctest: +SKIP
    """

    def __init__(self, config: ServerConfig, builders: dict[str, Builder] | None = None) -> None:
        self.config = config
        self.token = auth.check_token(config.token)
        self.sessions = SessionStore(config.workdir, config.resume, config.limits, builders or dict(BUILDERS))
        self._server: Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the server is not started")
        return self._server.socket.getsockname()[1]

    def start(self) -> int:
        """Bind and serve in a background thread; returns the port."""
        cfg = self.config
        self._server = serve(self._handle, cfg.host, cfg.port, max_size=cfg.max_message_bytes + auth.HEADER_BYTES,
                             max_queue=4, compression=None, ping_interval=20, ping_timeout=120,
                             open_timeout=cfg.handshake_timeout)
        self._thread = threading.Thread(target=self._server.serve_forever, name="et-server", daemon=True)
        self._thread.start()
        log.info("listening on %s:%d, %d session(s) on disk", cfg.host, self.port, len(self.sessions))
        return self.port

    def serve_forever(self) -> None:
        self.start()
        assert self._thread is not None
        self._thread.join()

    def shutdown(self) -> None:
        if self._server is not None:
            self._server.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _handle(self, ws: ServerConnection) -> None:
        peer = ws.remote_address
        channel: Channel | None = None
        try:
            channel, hello = server_handshake(ws, self.token, self.config.max_message_bytes,
                                              self.config.chunk_bytes, self.config.handshake_timeout)
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
            log.info("%s: %s", peer, err)
        except EncTorchError as err:
            log.warning("%s: %s: %s", peer, type(err).__name__, err)
            (channel or Channel(ws)).fail(err)
        except Exception as err:  # one broken session must not take the server down
            log.exception("%s: unexpected error", peer)
            (channel or Channel(ws)).fail(err)

    def _session_for(self, session_id: str, fingerprint: str) -> Session:
        if not session_id:
            return self.sessions.create()
        session = self.sessions.get(session_id)
        if session.fingerprint is not None and fingerprint != session.fingerprint:
            raise ContextMismatchError("this session belongs to another key owner (public-key fingerprint differs)")
        return session
