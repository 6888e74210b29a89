"""Use every core: fork workers over independent ciphertext work (SEAL runs single-threaded and
holds the GIL, so threads do not help; processes do).

``fork_map(ctx, fn, shares)`` runs ``fn(share)`` for every share and returns the results in order:
the first share in this process, each other one in a forked child. A child sees every ciphertext
already in memory (copy-on-write: nothing is serialized on the way in) and sends its result
ciphertexts back as bytes, with the op counts it ran. Children never refresh (no Refresher is active
inside them): callers bring operands to the levels they need before splitting the work.

The worker count is ``workers()``: the ``ENCRYPTED_TORCH_WORKERS`` environment variable, else the
cores this process may use; ``use_workers(n)`` sets it for a block. Where ``os.fork`` does not exist
everything runs in this process.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import pickle
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from .ckks import counters
from .ckks.evaluator import Cipher
from .errors import EncTorchError
from .refresh import refresh_with

T = TypeVar("T")

_workers: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar("encrypted_torch_workers",
                                                                                   default=None)

MIN_WORK = 32
"""Work smaller than this many independent block products stays in one process: forking a large
process costs about as much as a few dozen small products."""


class WorkerError(EncTorchError, RuntimeError):
    """A worker process failed; the message carries its traceback."""


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def workers() -> int:
    """How many processes ``fork_map`` may use (1: everything runs here)."""
    if not hasattr(os, "fork"):
        return 1
    n = _workers.get()[0] if _workers.get() else None
    if n is None:
        env = os.environ.get("ENCRYPTED_TORCH_WORKERS", "").strip()
        if env:
            try:
                n = int(env)
            except ValueError:
                raise ValueError(f"ENCRYPTED_TORCH_WORKERS must be a whole number, got {env!r}") from None
        else:
            n = available_cores()
    return max(1, n)


@contextlib.contextmanager
def use_workers(n: int, min_work: int = MIN_WORK) -> Iterator[int]:
    """Run the block's matrix products over ``n`` processes (1 = serial); work below ``min_work``
    block products stays serial.

    >>> with use_workers(1):
    ...     workers()
    1
    """
    if n < 1:
        raise ValueError(f"need at least one worker, got {n}")
    token = _workers.set((n, min_work))
    try:
        yield n
    finally:
        _workers.reset(token)


def plan(items: Sequence[T], work: int) -> list[list[T]]:
    """``items`` split over ``workers()`` shares if ``work`` (block products) is worth a fork, else one."""
    min_work = _workers.get()[1] if _workers.get() else MIN_WORK
    return split(items, workers() if work >= min_work else 1)


def split(items: Sequence[T], parts: int) -> list[list[T]]:
    """``items`` cut into at most ``parts`` contiguous runs of near-equal length (none empty)."""
    if not items:
        return []
    parts = max(1, min(parts, len(items)))
    q, r = divmod(len(items), parts)
    out, start = [], 0
    for p in range(parts):
        end = start + q + (1 if p < r else 0)
        out.append(list(items[start:end]))
        start = end
    return out


def fork_map(ctx: Any, fn: Callable[[Any], list[Cipher]], shares: Sequence[Any]) -> list[list[Cipher]]:
    """``[fn(s) for s in shares]``, the shares after the first in forked children.

    ``fn`` returns a list of ciphertexts under ``ctx``'s keys. Op counts of the children are added to
    every open ``count_ops`` block, so counts do not depend on the worker count.
    """
    if len(shares) <= 1 or not hasattr(os, "fork"):
        return [fn(s) for s in shares]
    sys.stdout.flush()
    sys.stderr.flush()
    children = [_spawn(ctx, fn, s) for s in shares[1:]]
    try:
        first = fn(shares[0])
    finally:
        results = [_collect(ctx, pid, fd) for pid, fd in children]
    out = [first]
    for kind, payload in results:
        if kind == "err":
            raise payload
        ciphers, ops = payload
        for counts in counters.active():
            counts.add_(ops)
        out.append(ciphers)
    return out


def _spawn(ctx: Any, fn: Callable[[Any], list[Cipher]], share: Any) -> tuple[int, int]:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_fd)
        return pid, read_fd
    os.close(read_fd)  # the child: compute, send, leave without running the parent's exit handlers
    code = 0
    try:
        with refresh_with(None), counters.count_ops() as ops:
            out = fn(share)
        to_bytes = ctx.backend.handle_to_bytes
        data = pickle.dumps(("ok", ([(to_bytes(c.handle), c.level, c.scale, c.size) for c in out], ops)))
    except BaseException as err:  # noqa: BLE001 (reported to the parent, which re-raises)
        code = 1
        data = pickle.dumps(("err", _portable(err)))
    try:
        with os.fdopen(write_fd, "wb") as f:
            f.write(data)
    finally:
        os._exit(code)


def _portable(err: BaseException) -> BaseException:
    """The child's exception if it survives pickling, else a WorkerError carrying its traceback."""
    text = "".join(traceback.format_exception(err))
    try:
        clone = pickle.loads(pickle.dumps(err))
        if type(clone) is type(err) and str(clone) == str(err):
            return clone
    except Exception:  # noqa: BLE001
        pass
    return WorkerError(f"a worker process failed:\n{text}")


def _collect(ctx: Any, pid: int, fd: int) -> tuple[str, Any]:
    with os.fdopen(fd, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    if not data:
        how = (f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
               else f"exit status {os.WEXITSTATUS(status)}")
        return "err", WorkerError(f"a worker process died ({how}) before sending its result")
    kind, payload = pickle.loads(data)  # our own child's bytes, never the network's
    if kind == "err":
        return kind, payload
    raw, ops = payload
    ciphers = [Cipher(ctx.backend.handle_from_bytes(b), level, scale, ctx.evaluator.context_id, size)
               for b, level, scale, size in raw]
    return kind, (ciphers, ops)
