"""The executor's command-line flags, shared by ``python -m encrypted_torch.server`` and ``.hetal``.

    --executor {serial,fork,ray}   where the shares run (default: $ENCRYPTED_TORCH_EXECUTOR, else fork)
    --ray-address ADDRESS          a running Ray cluster ("auto", "ray://head:10001"); implies --executor ray
"""

from __future__ import annotations

import argparse

from ..parallel import make_executor, set_default_executor
from . import NAMES, Executor, ExecutorUnavailableError


def add_executor_arguments(ap: argparse.ArgumentParser) -> None:
    """Add ``--executor`` and ``--ray-address`` to ``ap``."""
    group = ap.add_argument_group("executor (where the server's ciphertext work runs)")
    group.add_argument("--executor", choices=NAMES, default=None,
                       help="serial: this process; fork: forked workers on this machine (default); "
                            "ray: a Ray cluster (pip install \"encrypted_torch[ray]\")")
    group.add_argument("--ray-address", default=None,
                       help="the Ray cluster to join (\"auto\": the one started with `ray start` on this machine; "
                            "default: $RAY_ADDRESS, else a local Ray on this machine's cores)")


def executor_from_args(args: argparse.Namespace) -> Executor | None:
    """Make the executor the flags name this process's default; None if no flag was given (the
    environment decides). ExecutorUnavailableError if Ray is chosen but not installed."""
    if args.executor is None and args.ray_address is None:
        return None
    name = args.executor or "ray"
    if args.ray_address is not None and name != "ray":
        raise ValueError(f"--ray-address needs --executor ray, got --executor {name}")
    executor = make_executor(name, address=args.ray_address) if name == "ray" else make_executor(name)
    set_default_executor(executor)
    return executor


def parse_args(ap: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """``ap.parse_args(argv)`` with the executor flags added and applied (a usage error if they
    cannot be: an unknown choice, or Ray missing)."""
    add_executor_arguments(ap)
    args = ap.parse_args(argv)
    try:
        executor_from_args(args)
    except (ExecutorUnavailableError, ValueError) as err:
        ap.error(str(err))
    return args
