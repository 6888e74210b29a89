"""What one server lets its clients use: timeouts, upload sizes, disk quotas, loaded keys.

Every limit has a ``python -m encrypted_torch.server`` flag (docs/protocol.md, "Limits and
hardening"); an error for a limit names it and the flag that raises it. Upload sizes are not a
flag: they follow from what the upload declares (the context's parameters, the manifest's shapes).
"""

from __future__ import annotations

import ctypes
import gc
import json
import math
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..ckks import serialize
from ..errors import KeyRoleError, SerializationError, ShapeError
from ..protocol.errors import ProtocolError, SessionError
from ..storage.dataset import Manifest
from ..tensor.layout import BlockLayout

GiB = 1 << 30
MAX_CONTEXT_META_BYTES = 1 << 20
_RINGS = (4096, 8192, 16384, 32768)


@dataclass
class Limits:
    """Timeouts, quotas and policies a session enforces on its client."""

    idle_timeout: float = 600.0
    reply_timeout: float = 600.0
    attach_timeout: float = 120.0
    max_sessions: int = 64  # --max-sessions
    max_session_bytes: int = 64 * GiB  # --max-session-gb
    max_total_bytes: int = 512 * GiB  # --max-disk-gb
    max_loaded_contexts: int = 2  # --max-loaded-contexts: detached sessions' keys kept in RAM
    allow_plain: bool = False  # --allow-plain-backend: accept unencrypted (plaintext backend) data; tests only
    max_infer_rows: int = 4096  # --max-infer-rows: rows in one encrypted inference request
    max_infer_session_rows: int = 1 << 24  # --max-infer-session-rows: rows inferred per session, ever


def quota_error(what: str, used: int, adding: int, limit: int, flag: str) -> SessionError:
    return SessionError(f"{what}: {used} bytes stored + {adding} uploading is over the {limit}-byte limit "
                        f"({limit / GiB:.3g} GiB); the server's operator can raise it with {flag}")


def context_header(first: bytes) -> dict[str, Any]:
    """The metadata of a public-context upload, read from its first chunk before a byte is stored.

    A SecretContext is refused here (KeyRoleError): its framing names its kind first.
    """
    try:
        kind, name, meta_raw = serialize.read_head(first, MAX_CONTEXT_META_BYTES)
    except SerializationError as err:
        raise ProtocolError(f"the first chunk of a public context must hold its framing and metadata section: "
                            f"{err}") from None
    if kind == "secret_context":
        raise KeyRoleError("the server refuses a secret key: upload SecretContext.public_bytes(), "
                           "never the SecretContext itself")
    if kind != "public_context" or name != "meta":
        raise ProtocolError(f"expected a public_context upload starting with its metadata, got {kind[:40]!r}")
    meta = serialize.loads_json(meta_raw, "public context metadata")
    try:
        n_ring, bits, steps = int(meta["params"]["n"]), list(meta["params"]["bits"]), list(meta["steps"])
        backend = str(meta["backend"])
    except (KeyError, TypeError, ValueError) as err:
        raise ProtocolError(f"malformed public context metadata: {err!r}") from None
    if n_ring not in _RINGS or not 2 <= len(bits) <= 64 or backend not in ("seal", "plain"):
        raise ProtocolError(f"unsupported context: backend {backend[:20]!r}, N={n_ring}, {len(bits)} primes")
    return {"backend": backend, "n": n_ring, "primes": len(bits), "steps": len(steps)}


def context_bytes_bound(header: dict[str, Any]) -> int:
    """A generous upper bound on a public context's size, from its ring, modulus chain and rotation count.

    A key-switching key is (primes - 1) ciphertexts of 2 polynomials over every prime, 8 bytes a
    coefficient (SEAL's uncompressed size); Galois keys: one per rotation step (at least one per
    power of two, SEAL's default set), plus the relinearization key and the public key.
    """
    n, primes = header["n"], header["primes"]
    poly = n * primes * 8
    keys = max(header["steps"], 2 * int(math.log2(n))) + 2
    return keys * (primes - 1) * 2 * poly + 2 * poly + (2 << 20)


def check_context_upload(first: bytes, size: int, allow_plain: bool) -> dict[str, Any]:
    """Refuse a public-context upload on its first chunk: secret key, plaintext backend, or too large."""
    header = context_header(first)
    if header["backend"] == "plain" and not allow_plain:
        raise SessionError("this server refuses plain-backend contexts (the data would not be encrypted); "
                           "start it with --allow-plain-backend for tests")
    bound = context_bytes_bound(header)
    if size > bound:
        raise SessionError(f"a {size}-byte public context is over the {bound} bytes its parameters can need "
                           f"(N={header['n']}, {header['primes']} primes, {header['steps']} rotation keys)")
    return header


def cipher_bytes(ctx: Any) -> int:
    """The serialized size of one fresh ciphertext under ``ctx`` (measured: backends and compression differ)."""
    cipher = ctx.encrypt_vector(np.zeros(ctx.slots))
    return len(ctx.backend.handle_to_bytes(cipher.handle))


def dataset_file_bound(manifest: Manifest, rows: int, part: str, cipher: int) -> int:
    """Largest size an EncTensor file of one batch can have: its blocks × twice a ciphertext, plus framing."""
    cols, tiling = (manifest.num_features, "grid") if part == "x" else (manifest.num_classes, "horizontal")
    try:
        n_a, n_b = BlockLayout((rows, cols), manifest.unit, tiling).grid
    except ShapeError:
        n_a, n_b = math.ceil(rows / manifest.unit[0]), math.ceil(cols / manifest.unit[1])
    return n_a * n_b * (2 * cipher + 1024) + (64 << 10)


def check_manifest_sizes(manifest: Manifest, cipher: int, where: str) -> int:
    """Each file's declared size within what its shape can need; returns the dataset's total bytes."""
    for b in manifest.batches:
        for part, entry in (("x", b.x), ("y", b.y)):
            if entry is None:
                continue
            bound = dataset_file_bound(manifest, b.rows, part, cipher)
            if entry.bytes > bound:
                raise SessionError(f"{where}: {entry.file} declares {entry.bytes} bytes, over the {bound} bytes "
                                   f"{b.rows} rows of its shape can need under this context")
    return sum(f.bytes for f in manifest.files())


def dir_bytes(path: Path) -> int:
    """Bytes of the regular files under ``path`` (not following links)."""
    total, stack = 0, [path]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                    elif entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
        except OSError:
            continue
    return total


class ContextCache:
    """The PublicContexts of detached sessions (Galois keys: up to GBs each), the ``keep`` most recent.

    An attached session holds its own context; when it detaches the context is parked here, and
    the least recently parked ones beyond ``keep`` are dropped so their memory can be freed.
    """

    def __init__(self, keep: int) -> None:
        self.keep = max(0, keep)
        self._lock = threading.Lock()
        self._parked: OrderedDict[str, Any] = OrderedDict()

    def __len__(self) -> int:
        return len(self._parked)

    def take(self, session_id: str) -> Any | None:
        with self._lock:
            return self._parked.pop(session_id, None)

    def park(self, session_id: str, ctx: Any) -> int:
        """Keep ``ctx``; returns how many contexts were dropped to make room."""
        with self._lock:
            self._parked[session_id] = ctx
            self._parked.move_to_end(session_id)
            dropped = 0
            while len(self._parked) > self.keep:
                self._parked.popitem(last=False)
                dropped += 1
            return dropped


def release_memory() -> None:
    """Free what dropped keys held now: collect cycles (evaluators, tensors), hand freed heap back (glibc)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the allocator keeps the pages for reuse
        pass


def describe(limits: Limits) -> str:
    return json.dumps({"max_sessions": limits.max_sessions, "max_session_bytes": limits.max_session_bytes,
                       "max_total_bytes": limits.max_total_bytes, "max_loaded_contexts": limits.max_loaded_contexts,
                       "allow_plain": limits.allow_plain, "max_infer_rows": limits.max_infer_rows,
                       "max_infer_session_rows": limits.max_infer_session_rows})
