"""The Ray executor: shares as Ray tasks on one machine or a cluster (``pip install "encrypted_torch[ray]"``).

* The public context (evaluation keys: ~18 MB per Galois key at N=2^14) is put into the object store
  once per executor and key fingerprint; Ray copies it to a node once, and each worker process loads
  it once (``_CONTEXTS``, keyed by fingerprint). A task carries only references to it.
* A map's share function is pickled once (``ray_wire``: ciphertexts as bytes, keys by fingerprint) and
  put once; each worker process unpickles it once per map, however many shares it runs.
* Refreshes asked by remote shares go through a mailbox actor to the driver, whose Refresher serves
  them: the key owner's link and anything secret stay in the driver. As the fork pool does, requests
  are answered together once every running share waits on one: one key-owner round trip per stage,
  not one per share. Answers are kept per
  (share, request number) for the map, so a retried share gets the same fresh ciphertexts again
  without asking the key owner twice.
* A worker that dies mid-share is retried (``max_retries``, tasks are pure functions of their
  inputs); past that the map raises WorkerError. A share's own exception is re-raised as itself.
  Ray retries shares its memory monitor kills without end by default; a Ray this executor starts
  retries them ``max_retries`` times (on a cluster: ``RAY_task_oom_retries`` for ``ray start``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import pickle
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ..ckks import cipher_codec, counters
from ..ckks.evaluator import Cipher
from ..ckks.public import PublicContext
from ..refresh import current_refresher, refresh_stage, refresh_with
from . import Executor, WorkerError, ray_wire
from .fork import _portable

logger = logging.getLogger(__name__)


@dataclass
class TransferStats:
    """Bytes moved between the driver and the workers (driver's side; Ray copies an object to a node once)."""

    context_bytes: int = 0  # public contexts put (once per fingerprint)
    function_bytes: int = 0  # pickled share functions and their ciphertexts (once per map)
    share_bytes: int = 0  # the shares' own arguments
    result_bytes: int = 0  # ciphertexts returned
    refresh_bytes: int = 0  # refresh requests and answers
    maps: int = 0
    tasks: int = 0
    context_loads: int = 0  # worker processes that loaded a public context for a share
    workers: set[tuple[str, int]] = field(default_factory=set)  # (node id, pid) that ran shares
    task_seconds: list[list[float]] = field(default_factory=list)  # per map, each share's CPU s in its worker

    @property
    def total(self) -> int:
        return (self.context_bytes + self.function_bytes + self.share_bytes + self.result_bytes
                + self.refresh_bytes)


class RayExecutor(Executor):
    """Shares as Ray tasks. ``address``: a running cluster ("auto", "ray://host:10001", ...), else
    ``ray.init`` starts a local one with ``num_cpus``. ``timeout``: seconds a map may go without a
    share finishing or a refresh asked (None: no bound). ``record``: a list that gets every payload
    sent to the workers (tests check it holds no secret)."""

    name = "ray"

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None, max_retries: int = 3,
                 timeout: float | None = None, init_options: dict[str, Any] | None = None,
                 record: list[bytes] | None = None) -> None:
        self.address, self.num_cpus, self.max_retries, self.timeout = address, num_cpus, max_retries, timeout
        self.init_options = dict(init_options or {})
        self.record = record
        self.stats = TransferStats()
        self._lock = threading.Lock()
        self._started = False
        self._contexts: dict[str, Any] = {}
        self._mailbox: Any = None
        self._cpus: tuple[float, int] = (0.0, 1)

    def __repr__(self) -> str:
        return f"RayExecutor(address={self.address!r})"

    def connect(self) -> None:
        """Join the cluster (or start a local Ray) unless this process is connected already."""
        with self._lock:
            if ray.is_initialized():
                return
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, **self.init_options}
            if self.address is None:  # a Ray of our own: a share its memory monitor kills is not retried forever
                options.setdefault("_system_config", {"task_oom_retries": self.max_retries})
                if self.num_cpus is not None:
                    options["num_cpus"] = self.num_cpus
            ray.init(address=self.address, **options)
            self._started = True
            nodes = [n for n in ray.nodes() if n.get("Alive")]
            logger.info("Ray executor: joined %s (%d node(s), %d CPUs)", self.address or "a new local Ray",
                        len(nodes), int(ray.cluster_resources().get("CPU", 0)))

    def close(self) -> None:
        with self._lock:
            if self._mailbox is not None and ray.is_initialized():
                ray.kill(self._mailbox)
            self._mailbox, self._contexts = None, {}
            if self._started and ray.is_initialized():
                ray.shutdown()
            self._started = False

    def default_workers(self) -> int:
        """The cluster's CPUs (read at most every 5 s): one share each."""
        self.connect()
        when, n = self._cpus
        if time.monotonic() - when > 5.0:
            n = max(1, int(ray.cluster_resources().get("CPU", 1)))
            self._cpus = (time.monotonic(), n)
        return n

    def map(self, ctx: Any, fn: Callable[[Any], list[Cipher]], shares: Sequence[Any], *,
            serve_refreshes: bool = False) -> list[list[Cipher]]:
        if not isinstance(ctx, PublicContext):
            raise TypeError(f"the Ray executor needs the shares' PublicContext, got {type(ctx).__name__}")
        self.connect()
        refresher = current_refresher() if serve_refreshes else None
        call = uuid.uuid4().hex
        context_ref = self._context_ref(ctx)
        function_ref = ray.put(self._ship(ray_wire.dumps(fn, ctx), "function_bytes"))
        mailbox = self._mailbox_actor() if refresher is not None else None
        run = _run_share.options(max_retries=self.max_retries, retry_exceptions=False)
        tasks = [run.remote(call, i, ctx.fingerprint, [context_ref], [function_ref],
                            self._ship(pickle.dumps(share), "share_bytes"), mailbox)
                 for i, share in enumerate(shares)]
        self.stats.maps += 1
        self.stats.tasks += len(tasks)
        outputs = self._collect(ctx, call, tasks, mailbox, refresher)
        results = []
        self.stats.task_seconds.append([info[3] for *_, info in outputs])
        for records, payloads, ops, (node, pid, loaded, _) in outputs:
            self.stats.workers.add((node, pid))
            self.stats.context_loads += loaded
            self.stats.result_bytes += sum(map(len, payloads))
            results.append(cipher_codec.load(ctx, records, payloads, what="worker ciphertext", error=WorkerError))
            for counts in counters.active():
                counts.add_(ops)
        return results

    # --- the driver's side ---------------------------------------------------------------------------
    def _ship(self, payload: Any, field: str) -> Any:
        """Count (and record) what goes to the workers: bytes, or a packed function."""
        parts = [payload] if isinstance(payload, bytes) else [payload[0], *payload[2]]
        setattr(self.stats, field, getattr(self.stats, field) + sum(map(len, parts)))
        if self.record is not None:
            self.record.extend(parts)
        return payload

    def _context_ref(self, ctx: PublicContext) -> Any:
        with self._lock:
            ref = self._contexts.get(ctx.fingerprint)
            if ref is None:
                ref = self._contexts[ctx.fingerprint] = ray.put(self._ship(ctx.to_bytes(), "context_bytes"))
            return ref

    def _mailbox_actor(self) -> Any:
        with self._lock:
            if self._mailbox is None:  # on the driver's node, no CPU: it only passes ciphertexts on
                here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
                self._mailbox = _Mailbox.options(scheduling_strategy=here).remote()
            return self._mailbox

    def _collect(self, ctx: PublicContext, call: str, tasks: list[Any], mailbox: Any,
                 refresher: Any) -> list[Any]:
        index = {t: i for i, t in enumerate(tasks)}
        outputs: list[Any] = [None] * len(tasks)
        pending = list(tasks)
        asks = mailbox.next.remote(call) if mailbox is not None else None
        answered: dict[tuple[int, int], tuple[bytes, Any]] = {}  # (share, request number) → (digest, answer)
        waiting: dict[int, tuple[Any, Any]] = {}  # share → (key, request) not answered yet
        try:
            while pending:
                ready, _ = ray.wait(pending + ([asks] if asks is not None else []), num_returns=1,
                                    timeout=self.timeout)
                if not ready:
                    raise WorkerError(f"no Ray share finished or asked for a refresh in {self.timeout} s")
                for ref in ready:
                    if ref == asks:
                        for key, request in _mailbox_get(ref):
                            self.stats.refresh_bytes += sum(map(len, request[1]))
                            replay = _replay(key, request, answered)
                            if replay is not None:
                                mailbox.answer.remote(key, replay)
                            else:
                                waiting[key[1]] = (key, request)
                        asks = mailbox.next.remote(call)
                    else:
                        pending.remove(ref)
                        waiting.pop(index[ref], None)
                        outputs[index[ref]] = _result(ref, self.max_retries)
                if waiting and len(waiting) == len(pending):  # every running share waits: answer together
                    self._answer_together(ctx, refresher, waiting, answered, mailbox)
                    waiting.clear()
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            if mailbox is not None:  # it may be lost or hold the failed map's waits: the next map makes another
                with self._lock:
                    self._mailbox = None
                ray.kill(mailbox)
                mailbox = None
            raise
        finally:
            if mailbox is not None:
                mailbox.close.remote(call)
        return outputs

    def _answer_together(self, ctx: PublicContext, refresher: Any, waiting: dict[int, tuple[Any, Any]],
                         answered: dict[tuple[int, int], tuple[bytes, Any]], mailbox: Any) -> None:
        """One key-owner round trip per stage for all waiting shares (shares run the same stages on
        different rows, so they ask in step, as the fork pool's children), split back in share order."""
        by_stage: dict[str, list[int]] = {}
        for i in sorted(waiting):
            by_stage.setdefault(waiting[i][1][2], []).append(i)
        for stage, group in by_stage.items():
            try:
                asked = [cipher_codec.load(ctx, waiting[i][1][0], waiting[i][1][1], what="refresh request",
                                           error=WorkerError) for i in group]
                fresh = refresh_stage(refresher, [c for part in asked for c in part], stage)
                replies, start = [], 0
                for part in asked:
                    replies.append(("fresh", cipher_codec.dump(ctx, fresh[start : start + len(part)])))
                    start += len(part)
            except Exception as err:  # noqa: BLE001 (each share raises it where it asked)
                replies = [("err", _portable(err))] * len(group)
            for i, reply in zip(group, replies, strict=True):
                key, request = waiting[i]
                if reply[0] == "fresh":
                    self._ship(b"".join(reply[1][1]), "refresh_bytes")
                answered[key[1:]] = (_digest(request), reply)
                mailbox.answer.remote(key, reply)


def _digest(request: Any) -> bytes:
    return hashlib.sha256(b"".join(request[1])).digest()


def _replay(key: tuple[str, int, int], request: Any, answered: dict[tuple[int, int], tuple[bytes, Any]]) -> Any:
    """The first answer to a retried share's repeated request (None if it was not answered yet)."""
    seen = answered.get(key[1:])
    if seen is None:
        return None
    if seen[0] != _digest(request):
        return "err", WorkerError(f"share {key[1]} asked refresh {key[2]} again for other ciphertexts")
    return seen[1]


def _mailbox_get(ref: Any) -> Any:
    """The mailbox's pending requests; WorkerError if the mailbox actor was lost (killed, out of memory)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as err:
        raise WorkerError(f"the refresh mailbox was lost ({type(err).__name__}): {err}") from None


def _result(ref: Any, retries: int) -> Any:
    """A task's output; its own exception as itself, a lost worker as WorkerError."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as err:
        cause = getattr(err, "cause", None)
        if isinstance(cause, Exception):
            raise cause from None
        raise WorkerError(f"a Ray share failed:\n{err}") from None
    except ray.exceptions.RayError as err:
        raise WorkerError(f"a Ray worker was lost and the share failed after {retries} retries "
                          f"({type(err).__name__}): {err}") from None


@ray.remote(num_cpus=0)
class _Mailbox:
    """Refresh requests from the shares of each map, to the driver, and its answers back."""

    def __init__(self) -> None:
        self.queues: dict[str, asyncio.Queue] = {}
        self.waiting: dict[tuple[str, int, int], asyncio.Future] = {}

    def _queue(self, call: str) -> asyncio.Queue:
        return self.queues.setdefault(call, asyncio.Queue())

    async def ask(self, key: tuple[str, int, int], request: Any) -> Any:
        future = asyncio.get_running_loop().create_future()
        self.waiting[key] = future  # a retried share replaces its dead attempt's wait
        await self._queue(key[0]).put((key, request))
        return await future

    async def next(self, call: str) -> list[Any]:
        queue = self._queue(call)
        items = [await queue.get()]
        while not queue.empty():
            items.append(queue.get_nowait())
        return [item for item in items if item is not None]

    async def answer(self, key: tuple[str, int, int], reply: Any) -> None:
        future = self.waiting.pop(key, None)
        if future is not None and not future.done():
            future.set_result(reply)

    async def close(self, call: str) -> None:
        queue = self.queues.pop(call, None)
        if queue is not None:
            queue.put_nowait(None)
        for key in [k for k in self.waiting if k[0] == call]:
            self.waiting.pop(key).cancel()


# --- the worker's side -------------------------------------------------------------------------------
_CONTEXTS: dict[str, PublicContext] = {}  # fingerprint → the context, loaded once per worker process
_FUNCTION: list[Any] = []  # [map id, function]: the last map's function, unpickled once per worker
_KEEP_CONTEXTS = 2


def _worker_context(fingerprint: str, ref: Any) -> tuple[PublicContext, bool]:
    """The context (from this process's cache, else the object store) and whether it was loaded now."""
    ctx = _CONTEXTS.get(fingerprint)
    if ctx is not None:
        return ctx, False
    ctx = PublicContext.from_bytes(ray.get(ref))
    if ctx.fingerprint != fingerprint:
        raise WorkerError("the public context in the object store has another fingerprint")
    while len(_CONTEXTS) >= _KEEP_CONTEXTS:
        _CONTEXTS.pop(next(iter(_CONTEXTS)))
    _CONTEXTS[fingerprint] = ctx
    return ctx, True


def _worker_function(call: str, ctx: PublicContext, ref: Any) -> Any:
    if not _FUNCTION or _FUNCTION[0] != call:
        _FUNCTION[:] = [call, ray_wire.loads(ray.get(ref), ctx)]
    return _FUNCTION[1]


class _MailboxRefresher:
    """A remote share's Refresher: asks the driver through the mailbox, request by request."""

    def __init__(self, ctx: PublicContext, mailbox: Any, call: str, share: int) -> None:
        self.ctx, self.mailbox, self.call, self.share, self.asked = ctx, mailbox, call, share, 0

    def refresh(self, ciphers: Sequence[Cipher], stage: str = "") -> list[Cipher]:
        key = (self.call, self.share, self.asked)
        self.asked += 1
        kind, payload = ray.get(self.mailbox.ask.remote(key, (*cipher_codec.dump(self.ctx, ciphers), stage)))
        if kind == "err":
            raise payload
        return cipher_codec.load(self.ctx, *payload, what="refreshed ciphertext", error=WorkerError)


@ray.remote
def _run_share(call: str, share_index: int, fingerprint: str, context_box: list[Any], function_box: list[Any],
               share: bytes, mailbox: Any) -> tuple[list[list[Any]], list[bytes], counters.OpCounts, Any]:
    """One share in a worker process: its ciphertexts as records and bytes, the ops it ran, and where
    it ran (node, pid, whether the context was loaded for it, CPU seconds)."""
    cpu = time.process_time()
    ctx, loaded = _worker_context(fingerprint, context_box[0])
    fn = _worker_function(call, ctx, function_box[0])
    refresher = _MailboxRefresher(ctx, mailbox, call, share_index) if mailbox is not None else None
    with refresh_with(refresher), counters.count_ops() as ops:
        out = fn(pickle.loads(share))  # our own driver's bytes
    records, payloads = cipher_codec.dump(ctx, out)
    return records, payloads, ops, (ray.get_runtime_context().get_node_id(), os.getpid(), loaded,
                                    time.process_time() - cpu)
