"""Choosing the executor: the environment, a block, the CLI flags; serial and fork agree bit for bit;
without Ray the 'ray' choice is a typed error that names the extra."""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pytest
import torch

import encrypted_torch as et
from encrypted_torch import parallel
from encrypted_torch.executors import ExecutorUnavailableError, SerialExecutor
from encrypted_torch.executors import cli as executor_cli
from encrypted_torch.executors.fork import ForkExecutor
from encrypted_torch.functional import softmax
from encrypted_torch.linalg import diag_abt, diag_atb


@pytest.fixture(autouse=True)
def _no_process_default(monkeypatch):
    """Each test starts from the environment's choice and leaves no process default behind."""
    monkeypatch.delenv("ENCRYPTED_TORCH_EXECUTOR", raising=False)
    monkeypatch.delenv("ENCRYPTED_TORCH_WORKERS", raising=False)
    monkeypatch.delenv("ENCRYPTED_TORCH_MIN_WORK", raising=False)
    old = parallel.set_default_executor(None)
    yield
    parallel.set_default_executor(old)


def test_environment_block_and_default(monkeypatch) -> None:
    assert parallel.current_executor().name == "fork"
    parallel.set_default_executor(None)
    monkeypatch.setenv("ENCRYPTED_TORCH_EXECUTOR", "serial")
    assert parallel.current_executor().name == "serial"
    assert parallel.workers() == 1  # a serial executor cuts nothing unless asked to
    with parallel.use_executor("fork") as fork:
        assert parallel.current_executor() is fork
        with parallel.use_workers(3):
            assert parallel.workers() == 3 and parallel.current_executor() is fork
    assert parallel.current_executor().name == "serial"
    parallel.set_default_executor(None)
    monkeypatch.setenv("ENCRYPTED_TORCH_EXECUTOR", "threads")
    with pytest.raises(ValueError, match="ENCRYPTED_TORCH_EXECUTOR must be one of serial, fork, ray"):
        parallel.current_executor()
    with pytest.raises(ValueError, match="unknown executor 'gpu'"):
        parallel.make_executor("gpu")


def test_min_work_settings(monkeypatch) -> None:
    monkeypatch.setenv("ENCRYPTED_TORCH_EXECUTOR", "serial")
    assert parallel.min_work() == parallel.MIN_WORK
    monkeypatch.setenv("ENCRYPTED_TORCH_MIN_WORK", "0")
    assert parallel.min_work() == 0 and parallel.worker_count(0) == 1  # serial: one share whatever the work
    with parallel.use_workers(2, min_work=5):
        assert parallel.min_work() == 5 and parallel.worker_count(4) == 1 and parallel.worker_count(5) == 2
    monkeypatch.setenv("ENCRYPTED_TORCH_MIN_WORK", "some")
    with pytest.raises(ValueError, match="ENCRYPTED_TORCH_MIN_WORK"):
        parallel.min_work()


def _product_and_softmax(ctx):
    rng = np.random.default_rng(3)
    unit = (128, ctx.slots // 128)
    x = et.encrypt(torch.from_numpy(rng.normal(size=(300, 100))), ctx, unit=unit)
    w = et.encrypt(torch.from_numpy(rng.normal(size=(6, 100))), ctx, unit=unit, tiling="vertical")
    g = et.encrypt(torch.from_numpy(rng.normal(size=(300, 6))), ctx, unit=unit, tiling="horizontal")
    logits = et.encrypt(torch.from_numpy(rng.uniform(-20, 20, (700, 5))), ctx, unit=(ctx.slots // 8, 8),
                        tiling="horizontal")
    return [*diag_abt(x, w).ciphers(), *diag_atb(g, x, out_scale=0.5).ciphers(), *softmax(logits).ciphers()]


@pytest.mark.parametrize("executor", [SerialExecutor(), ForkExecutor()], ids=["serial", "fork"])
def test_executors_agree_bit_for_bit(plain_ctx, executor) -> None:
    """The same shares (3 of them) in this process and in forked children: same slots, same counts."""
    runs = []
    for chosen in (SerialExecutor(), executor):
        with parallel.use_executor(chosen), parallel.use_workers(3, min_work=0), et.refresh_with(plain_ctx), \
                et.count_ops() as ops:
            out = _product_and_softmax(plain_ctx)
        runs.append((np.stack([plain_ctx.decrypt_vector(c) for c in out]), ops))
    (a, ops_a), (b, ops_b) = runs
    np.testing.assert_array_equal(a, b)
    assert ops_a.as_dict() == ops_b.as_dict() and ops_a.by_level == ops_b.by_level and ops_a.refreshes > 0


def test_cli_flags_set_the_process_default() -> None:
    ap = argparse.ArgumentParser()
    args = executor_cli.parse_args(ap, ["--executor", "serial"])
    assert args.executor == "serial" and parallel.current_executor().name == "serial"
    args = executor_cli.parse_args(argparse.ArgumentParser(), [])
    assert args.executor is None and parallel.current_executor().name == "serial"  # no flag: unchanged


def test_cli_refuses_a_ray_address_without_ray_executor(capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        executor_cli.parse_args(argparse.ArgumentParser(), ["--executor", "fork", "--ray-address", "auto"])
    assert stop.value.code == 2 and "--ray-address needs --executor ray" in capsys.readouterr().err


def test_without_ray_the_choice_names_the_extra(monkeypatch, capsys) -> None:
    """Ray not importable (as where the extra is not installed): a typed error, and a usage error on the CLI."""
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    monkeypatch.delitem(sys.modules, "encrypted_torch.executors.ray_executor", raising=False)
    monkeypatch.delitem(sys.modules, "encrypted_torch.executors.ray_wire", raising=False)
    with pytest.raises(ExecutorUnavailableError, match=r'pip install "encrypted_torch\[ray\]"') as err:
        parallel.make_executor("ray")
    assert isinstance(err.value, et.errors.EncTorchError)
    monkeypatch.setenv("ENCRYPTED_TORCH_EXECUTOR", "ray")
    with pytest.raises(ExecutorUnavailableError, match="extra"):
        parallel.current_executor()
    with pytest.raises(SystemExit) as stop:
        executor_cli.parse_args(argparse.ArgumentParser(), ["--executor", "ray"])
    assert stop.value.code == 2 and 'encrypted_torch[ray]' in capsys.readouterr().err
