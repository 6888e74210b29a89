"""Use every core, or every node: independent shares of ciphertext work on an executor.

``fork_map(ctx, fn, shares)`` runs ``fn(share)`` for every share on the current executor and returns
the results in order (the name stays from when forking was the only way): ``serial`` (this process),
``fork`` (forked children on this machine, the default) or ``ray`` (tasks on a Ray cluster). The
executors give the same ciphertexts bit for bit and the same op counts (``executors``).

The ambient settings live here and nowhere else: one ContextVar for a block (``use_workers``,
``use_executor``) over one process default (``set_default_executor``, else the environment:
``ENCRYPTED_TORCH_EXECUTOR`` = serial | fork | ray, ``RAY_ADDRESS``). The share count is ``workers()``:
``use_workers(n)``, else ``ENCRYPTED_TORCH_WORKERS``, else the executor's own (cores, or Ray's CPUs);
work smaller than ``min_work()`` block products is not cut (``ENCRYPTED_TORCH_MIN_WORK``).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from .ckks.evaluator import Cipher
from .executors import NAMES, Executor, ExecutorUnavailableError, SerialExecutor, WorkerError
from .executors.fork import ForkExecutor, available_cores

__all__ = ["MIN_WORK", "Executor", "ExecutorUnavailableError", "WorkerError", "available_cores", "current_executor",
           "fork_map", "make_executor", "min_work", "plan", "set_default_executor", "split", "use_executor",
           "use_workers", "worker_count", "workers"]

T = TypeVar("T")

MIN_WORK = 32
"""Work smaller than this many independent block products stays in one process: forking a large
process costs about as much as a few dozen small products."""


@dataclass(frozen=True)
class Settings:
    """A block's choices; None: the process default (the environment's)."""

    executor: Executor | None = None
    workers: int | None = None
    min_work: int | None = None


_settings: contextvars.ContextVar[Settings] = contextvars.ContextVar(
    "encrypted_torch_parallel", default=Settings())  # noqa: B039 (frozen: never mutated)
_default: list[Executor] = []  # the process default, made once (threads of a server share it)
_default_lock = threading.Lock()


def make_executor(name: str, **options: Any) -> Executor:
    """The executor called ``name`` ("serial", "fork" or "ray"); ``options`` go to the Ray executor
    (``address``, ``num_cpus``, ...). ExecutorUnavailableError if Ray is chosen but not installed."""
    if name == "serial":
        return SerialExecutor()
    if name == "fork":
        return ForkExecutor()
    if name == "ray":
        try:
            from .executors.ray_executor import RayExecutor
        except ImportError as err:
            raise ExecutorUnavailableError(
                f"the 'ray' executor needs Ray, which is not installed ({err}); "
                'install the extra: pip install "encrypted_torch[ray]"') from err
        return RayExecutor(**options)
    raise ValueError(f"unknown executor {name!r}; choose one of {', '.join(NAMES)}")


def _from_environment() -> Executor:
    name = os.environ.get("ENCRYPTED_TORCH_EXECUTOR", "").strip() or "fork"
    if name not in NAMES:
        raise ValueError(f"ENCRYPTED_TORCH_EXECUTOR must be one of {', '.join(NAMES)}, got {name!r}")
    return make_executor(name)


def set_default_executor(executor: Executor | str | None, **options: Any) -> Executor | None:
    """Make ``executor`` (or the one named) this process's default, for every thread; None: back to
    the environment's choice. Returns the executor it replaced (the caller may close it)."""
    if isinstance(executor, str):
        executor = make_executor(executor, **options)
    with _default_lock:
        old = _default[0] if _default else None
        _default[:] = [executor] if executor is not None else []
    return old


def current_executor() -> Executor:
    """The block's executor (``use_executor``), else the process default."""
    chosen = _settings.get().executor
    if chosen is not None:
        return chosen
    with _default_lock:
        if not _default:
            _default.append(_from_environment())
        return _default[0]


@contextlib.contextmanager
def use_executor(executor: Executor | str, **options: Any) -> Iterator[Executor]:
    """Run the block's shares on ``executor`` (or the one named; closed at the end if made here).

    >>> with use_executor("serial"):
    ...     current_executor().name
    'serial'
    """
    made = isinstance(executor, str)
    chosen = make_executor(executor, **options) if isinstance(executor, str) else executor
    token = _settings.set(replace(_settings.get(), executor=chosen))
    try:
        yield chosen
    finally:
        _settings.reset(token)
        if made:
            chosen.close()


def workers() -> int:
    """How many shares ``plan`` cuts work into (1: everything runs here)."""
    n = _settings.get().workers
    if n is None:
        env = os.environ.get("ENCRYPTED_TORCH_WORKERS", "").strip()
        if env:
            try:
                n = int(env)
            except ValueError:
                raise ValueError(f"ENCRYPTED_TORCH_WORKERS must be a whole number, got {env!r}") from None
        else:
            n = current_executor().default_workers()
    return max(1, n)


@contextlib.contextmanager
def use_workers(n: int, min_work: int = MIN_WORK) -> Iterator[int]:
    """Cut the block's matrix products into ``n`` shares (1 = serial); work below ``min_work``
    block products stays serial.

    >>> with use_workers(1):
    ...     workers()
    1
    """
    if n < 1:
        raise ValueError(f"need at least one worker, got {n}")
    token = _settings.set(replace(_settings.get(), workers=n, min_work=min_work))
    try:
        yield n
    finally:
        _settings.reset(token)


def min_work() -> int:
    """Block products below which work stays in one process: ``use_workers(.., min_work)``, else
    ``ENCRYPTED_TORCH_MIN_WORK``, else ``MIN_WORK``."""
    n = _settings.get().min_work
    if n is None:
        env = os.environ.get("ENCRYPTED_TORCH_MIN_WORK", "").strip()
        try:
            n = int(env) if env else MIN_WORK
        except ValueError:
            raise ValueError(f"ENCRYPTED_TORCH_MIN_WORK must be a whole number, got {env!r}") from None
    return n


def worker_count(work: int) -> int:
    """``workers()`` if ``work`` (block products) is worth a fork, else 1."""
    return workers() if work >= min_work() else 1


def plan(items: Sequence[T], work: int) -> list[list[T]]:
    """``items`` split over ``worker_count(work)`` shares."""
    return split(items, worker_count(work))


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


def fork_map(ctx: Any, fn: Callable[[Any], list[Cipher]], shares: Sequence[Any], *,
             serve_refreshes: bool = False) -> list[list[Cipher]]:
    """``[fn(s) for s in shares]`` on the current executor, in order.

    ``fn`` returns a list of ciphertexts under ``ctx``'s keys. With ``serve_refreshes`` the shares'
    refreshes are served by this process's active Refresher (the key owner's link never leaves this
    process); without, shares run with no Refresher. Op counts of remote shares are added to every
    open ``count_ops`` block, so counts depend neither on the worker count nor on the executor.
    """
    if len(shares) <= 1:
        return [fn(s) for s in shares]
    return current_executor().map(ctx, fn, shares, serve_refreshes=serve_refreshes)
