"""``python -m encrypted_torch.server --port 8765 --workdir DIR [--resume]``: serve training sessions.

The shared token comes from ``--token-file`` or the ENCRYPTED_TORCH_TOKEN environment variable.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from ..errors import EncTorchError
from ..executors import cli as executor_cli
from ..protocol.auth import read_token
from .app import ServerConfig, TrainingServer
from .job import Builder
from .limits import GiB, Limits


def main(argv: list[str] | None = None, builders: dict[str, Builder] | None = None) -> int:
    """Run the server until SIGTERM/SIGINT; ``builders`` replaces the job builders (tests, extensions)."""
    ap = argparse.ArgumentParser(prog="python -m encrypted_torch.server", description=__doc__)
    ap.add_argument("--port", type=int, required=True, help="TCP port (0: any free port, printed at start)")
    ap.add_argument("--workdir", type=Path, required=True, help="where sessions, data and checkpoints live")
    ap.add_argument("--resume", action="store_true", help="continue the sessions found in --workdir")
    ap.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    ap.add_argument("--token-file", type=Path, help="file holding the shared token (else $ENCRYPTED_TORCH_TOKEN)")
    ap.add_argument("--max-message-mb", type=int, default=256, help="largest message accepted")
    ap.add_argument("--chunk-mb", type=int, default=8, help="upload chunk size announced to clients")
    ap.add_argument("--reply-timeout", type=float, default=600.0, help="seconds to wait for a client's reply")
    ap.add_argument("--idle-timeout", type=float, default=600.0, help="seconds a connected client may stay silent")
    ap.add_argument("--handshake-timeout", type=float, default=10.0,
                    help="seconds a new connection has to authenticate (per handshake step)")
    ap.add_argument("--max-connections", type=int, default=64, help="open connections, authenticated or not")
    ap.add_argument("--max-preauth", type=int, default=16,
                    help="connections still authenticating; a newer one closes the oldest")
    ap.add_argument("--max-sessions", type=int, default=64, help="sessions kept in --workdir")
    ap.add_argument("--max-session-gb", type=float, default=64.0, help="disk quota of one session")
    ap.add_argument("--max-disk-gb", type=float, default=512.0, help="disk quota of all sessions together")
    ap.add_argument("--max-loaded-contexts", type=int, default=2,
                    help="detached sessions whose keys stay in RAM (each up to GBs)")
    ap.add_argument("--max-infer-rows", type=int, default=4096, help="rows in one encrypted inference request")
    ap.add_argument("--max-infer-session-rows", type=int, default=1 << 24,
                    help="rows one session may send to encrypted inference in all")
    ap.add_argument("--allow-plain-backend", action="store_true",
                    help="accept plain-backend (unencrypted) contexts: for tests only")
    ap.add_argument("--certfile", type=Path, help="TLS certificate chain (PEM): serve wss://")
    ap.add_argument("--keyfile", type=Path, help="TLS private key (PEM), if not in --certfile")
    ap.add_argument("--log-level", default="INFO")
    args = executor_cli.parse_args(ap, argv)  # adds and applies --executor, --ray-address
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        limits = Limits(idle_timeout=args.idle_timeout, reply_timeout=args.reply_timeout,
                        max_sessions=args.max_sessions, max_session_bytes=int(args.max_session_gb * GiB),
                        max_total_bytes=int(args.max_disk_gb * GiB), max_loaded_contexts=args.max_loaded_contexts,
                        max_infer_rows=args.max_infer_rows, max_infer_session_rows=args.max_infer_session_rows)
        config = ServerConfig(args.workdir, read_token(args.token_file), host=args.host, port=args.port,
                              resume=args.resume, max_message_bytes=args.max_message_mb << 20,
                              chunk_bytes=min(args.chunk_mb, args.max_message_mb // 2 or 1) << 20,
                              handshake_timeout=args.handshake_timeout, max_connections=args.max_connections,
                              max_preauth=args.max_preauth, allow_plain=args.allow_plain_backend,
                              certfile=args.certfile, keyfile=args.keyfile, limits=limits)
        server = TrainingServer(config, builders)
        port = server.start()
    except (EncTorchError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"encrypted_torch server listening on {args.host}:{port}", flush=True)  # tests parse the port
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
