"""The fork pool: shares in forked children of this process (SEAL runs single-threaded and holds the
GIL, so threads do not help; processes do).

``fork_map(ctx, fn, shares)`` runs ``fn(share)`` for every share and returns the results in order:
the first share in this process, each other one in a forked child. A child sees every ciphertext
already in memory (copy-on-write: nothing is serialized on the way in) and sends its result
ciphertexts back as bytes, with the op counts it ran. Children never refresh (no Refresher is active
inside them) unless the caller asks this process to serve their refreshes (``serve_refreshes``).
Where ``os.fork`` does not exist everything runs in this process.
"""

from __future__ import annotations

import os
import pickle
import selectors
import struct
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from ..ckks import cipher_codec, counters
from ..ckks.evaluator import Cipher
from ..refresh import current_refresher, refresh_stage, refresh_with
from . import Executor, WorkerError


def fork_map(ctx: Any, fn: Callable[[Any], list[Cipher]], shares: Sequence[Any], *,
             serve_refreshes: bool = False) -> list[list[Cipher]]:
    """``[fn(s) for s in shares]`` over forked children.

    ``fn`` returns a list of ciphertexts under ``ctx``'s keys. By default this process runs the first
    share and the children never refresh. With ``serve_refreshes`` every share runs in a child and
    this process serves the children's refreshes through its active Refresher (the key owner
    link stays in this process). Op counts of the children are added to every open ``count_ops``
    block, so counts do not depend on the worker count.
    """
    if len(shares) <= 1 or not hasattr(os, "fork"):
        return [fn(s) for s in shares]
    refresher = current_refresher() if serve_refreshes else None
    sys.stdout.flush()
    sys.stderr.flush()
    here = [] if refresher is not None else shares[:1]
    children = [_Child.spawn(ctx, fn, s, proxy=refresher is not None) for s in shares[len(here):]]
    try:
        first = [fn(s) for s in here]
    finally:
        results = _serve(ctx, children, refresher)
    out = list(first)
    for kind, payload in results:
        if kind == "err":
            raise payload
        ciphers, ops = payload
        for counts in counters.active():
            counts.add_(ops)
        out.append(ciphers)
    return out


class ForkExecutor(Executor):
    """Forked children of this process on this machine (``fork_map``); as many as cores by default."""

    name = "fork"

    def default_workers(self) -> int:
        return available_cores() if hasattr(os, "fork") else 1

    def map(self, ctx: Any, fn: Callable[[Any], list[Cipher]], shares: Sequence[Any], *,
            serve_refreshes: bool = False) -> list[list[Cipher]]:
        return fork_map(ctx, fn, shares, serve_refreshes=serve_refreshes)


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _dump(ctx: Any, ciphers: Sequence[Cipher]) -> tuple[list[list[Any]], list[bytes]]:
    return cipher_codec.dump(ctx, ciphers)


def _load(ctx: Any, raw: tuple[list[list[Any]], list[bytes]]) -> list[Cipher]:
    return cipher_codec.load(ctx, *raw, what="worker ciphertext", error=WorkerError)


def _send(fd: int, message: Any) -> None:
    data = pickle.dumps(message)
    view = memoryview(struct.pack(">Q", len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def _receive(fd: int) -> Any:
    """One message, or None at end of file (the other side died)."""
    head = _read_exactly(fd, 8)
    if head is None:
        return None
    body = _read_exactly(fd, struct.unpack(">Q", head)[0])
    return None if body is None else pickle.loads(body)  # our own child's bytes, never the network's


def _read_exactly(fd: int, n: int) -> bytes | None:
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


class _ProxyRefresher:
    """A child's Refresher: asks the parent, which holds the real one."""

    def __init__(self, ctx: Any, to_parent: int, from_parent: int) -> None:
        self.ctx, self.to_parent, self.from_parent = ctx, to_parent, from_parent

    def refresh(self, ciphers: Sequence[Cipher], stage: str = "") -> list[Cipher]:
        _send(self.to_parent, ("refresh", _dump(self.ctx, ciphers), stage))
        reply = _receive(self.from_parent)
        if reply is None:
            raise WorkerError("the parent process went away during a refresh")
        kind, payload = reply
        if kind == "err":
            raise payload
        return _load(self.ctx, payload)


class _Child:
    def __init__(self, pid: int, from_child: int, to_child: int) -> None:
        self.pid, self.from_child, self.to_child = pid, from_child, to_child

    @classmethod
    def spawn(cls, ctx: Any, fn: Callable[[Any], list[Cipher]], share: Any, proxy: bool) -> _Child:
        up_r, up_w = os.pipe()
        down_r, down_w = os.pipe()
        pid = os.fork()
        if pid:
            os.close(up_w)
            os.close(down_r)
            return cls(pid, up_r, down_w)
        os.close(up_r)  # the child: compute, send, leave without running the parent's exit handlers
        os.close(down_w)
        code = 0
        try:
            refresher = _ProxyRefresher(ctx, up_w, down_r) if proxy else None
            with refresh_with(refresher), counters.count_ops() as ops:
                out = fn(share)
            message: Any = ("ok", (_dump(ctx, out), ops))
        except BaseException as err:  # noqa: BLE001 (reported to the parent, which re-raises)
            code = 1
            message = ("err", _portable(err))
        try:
            _send(up_w, message)
        finally:
            os._exit(code)


def _serve(ctx: Any, children: list[_Child], refresher: Any) -> list[tuple[str, Any]]:
    """Answer the children's refresh requests until each has sent its result; reap them all.

    Requests are answered together once every child still running waits on one (children run the
    same stages on different rows, so they ask in step): one key-owner round trip per stage, not one
    per child (``_answer_together``)."""
    results: dict[int, tuple[str, Any]] = {}
    waiting: dict[int, tuple[bytes, str]] = {}  # child → its refresh request (ciphertext bytes, stage)
    with selectors.DefaultSelector() as sel:
        for i, child in enumerate(children):
            sel.register(child.from_child, selectors.EVENT_READ, i)
        while len(results) < len(children):
            for key, _ in sel.select():
                i = key.data
                child = children[i]
                message = _receive(child.from_child)
                if message is not None and message[0] == "refresh":
                    waiting[i] = (message[1], message[2])
                    continue
                sel.unregister(child.from_child)
                results[i] = _finish(ctx, child, message)
            if waiting and len(waiting) + len(results) == len(children):
                _answer_together(ctx, children, waiting, refresher)
                waiting.clear()
    return [results[i] for i in range(len(children))]


def _answer_together(ctx: Any, children: list[_Child], waiting: dict[int, tuple[bytes, str]],
                     refresher: Any) -> None:
    """One refresh per stage for all waiting children, its fresh ciphertexts split back in order."""
    by_stage: dict[str, list[int]] = {}
    for i in sorted(waiting):
        by_stage.setdefault(waiting[i][1], []).append(i)
    for stage, group in by_stage.items():
        asked = [_load(ctx, waiting[i][0]) for i in group]
        try:
            fresh = refresh_stage(refresher, [c for part in asked for c in part], stage)
            start, replies = 0, []
            for part in asked:
                replies.append(("fresh", _dump(ctx, fresh[start : start + len(part)])))
                start += len(part)
        except Exception as err:  # noqa: BLE001 (each child raises it where it asked)
            replies = [("err", _portable(err))] * len(group)
        for i, reply in zip(group, replies, strict=True):
            _send(children[i].to_child, reply)


def _finish(ctx: Any, child: _Child, message: Any) -> tuple[str, Any]:
    os.close(child.from_child)
    os.close(child.to_child)
    _, status = os.waitpid(child.pid, 0)
    if message is None:
        how = (f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
               else f"exit status {os.WEXITSTATUS(status)}")
        return "err", WorkerError(f"a worker process died ({how}) before sending its result")
    kind, payload = message
    if kind == "err":
        return kind, payload
    raw, ops = payload
    return kind, (_load(ctx, raw), ops)


def _portable(err: BaseException) -> BaseException:
    """The exception if it survives pickling, else a WorkerError carrying its traceback."""
    text = "".join(traceback.format_exception(err))
    try:
        clone = pickle.loads(pickle.dumps(err))
        if type(clone) is type(err) and str(clone) == str(err):
            return clone
    except Exception:  # noqa: BLE001
        pass
    return WorkerError(f"a worker process failed:\n{text}")
