"""Executors: where the independent shares of a matrix product or a softmax run.

An executor maps ``fn`` over shares and returns each share's ciphertexts in order, adding the ops
the shares ran to every open ``count_ops`` block; it is chosen in ``encrypted_torch.parallel``:

* ``serial``: every share in this process, one after the other;
* ``fork``: forked children of this process (``executors.fork``, the default on one machine);
* ``ray``: tasks on a Ray cluster (``executors.ray_executor``; ``pip install "encrypted_torch[ray]"``).

All three give the same ciphertexts bit for bit and the same op counts for the same shares.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..ckks.evaluator import Cipher
from ..errors import EncTorchError

NAMES = ("serial", "fork", "ray")


class WorkerError(EncTorchError, RuntimeError):
    """A worker (process or Ray task) failed or died; the message says how, with its traceback."""


class ExecutorUnavailableError(EncTorchError, ImportError):
    """The chosen executor cannot run here (its optional dependency is missing)."""


class Executor:
    """Runs shares of ciphertext work; ``map`` is ``[fn(s) for s in shares]`` with the same result."""

    name = "executor"

    def default_workers(self) -> int:
        """How many shares the work is cut into when no worker count is set."""
        return 1

    def map(self, ctx: Any, fn: Callable[[Any], list[Cipher]], shares: Sequence[Any], *,
            serve_refreshes: bool = False) -> list[list[Cipher]]:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the executor started (a Ray runtime it launched); a no-op by default."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class SerialExecutor(Executor):
    """Every share in this process, in order, under this process's Refresher."""

    name = "serial"

    def map(self, ctx: Any, fn: Callable[[Any], list[Cipher]], shares: Sequence[Any], *,
            serve_refreshes: bool = False) -> list[list[Cipher]]:
        return [fn(s) for s in shares]
