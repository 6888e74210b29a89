"""Two processes, client and server (HETAL on digits, plaintext backend), with the server's shares on a 2-node
Ray cluster started here (``--executor ray --ray-address``): the same weights, bit for bit, as on the fork pool."""

from __future__ import annotations

import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from ray.cluster_utils import Cluster
from test_server import TOKEN, _env, stop

from encrypted_torch.client import KeyOwner
from encrypted_torch.client.hetal_job import decrypt_linear, prepare_hetal
from encrypted_torch.client.remote import RemoteSession
from encrypted_torch.hetal.config import config_for
from encrypted_torch.training import EarlyStopping

TESTS = Path(__file__).parent
ROOT = TESTS.parent
MB = 1 << 20


def _server(workdir: Path, log: Path, *executor_args: str) -> tuple[subprocess.Popen, int]:
    """``python -m encrypted_torch.server``, cutting even a small job's products into 2 shares."""
    cmd = [sys.executable, "-m", "encrypted_torch.server", "--port", "0", "--workdir", str(workdir),
           "--allow-plain-backend", *executor_args]
    env = {**_env(), "ENCRYPTED_TORCH_WORKERS": "2", "ENCRYPTED_TORCH_MIN_WORK": "0"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=open(log, "ab"), env=env, cwd=ROOT, text=True)  # noqa: SIM115
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline()
            if "listening on" in line:
                return proc, int(line.rsplit(":", 1)[1])
    proc.kill()
    raise RuntimeError(f"server did not start (exit {proc.poll()}): {log.read_text()[-2000:]}")


def _train(tmp_path: Path, name: str, prep, owner_state, *executor_args: str) -> tuple[Any, dict, str]:
    """A HETAL digits run: this process is the client (key owner), the server its own process."""
    owner = KeyOwner(prep.secret, EarlyStopping(patience=prep.config.patience))
    owner.load_state_dict(owner_state)
    log = tmp_path / f"{name}.log"
    proc, port = _server(tmp_path / name, log, *executor_args)
    try:
        session = RemoteSession(f"ws://127.0.0.1:{port}", TOKEN, owner, timeout=300)
        session.connect()
        session.upload(prep.train, prep.val)
        summary = session.train(prep.job(), prep.init)
        model = decrypt_linear(session.fetch_model(), prep.secret, prep.in_features)
        session.close()
    finally:
        stop(proc)
    return model, summary, log.read_text()


@pytest.mark.slow  # a 2-node Ray cluster and two server processes: a few minutes on 2 cores
def test_server_on_a_ray_cluster_trains_the_same_weights_as_on_fork(tmp_path) -> None:
    """HETAL on digits (the exact plaintext backend, 2 steps), the server on fork, then on a 2-node cluster."""
    prep = prepare_hetal(config_for("digits", preset="fast", backend="plain", batch_size=64, epochs=1,
                                    max_steps=2, lr=1.0, seed=0))
    fresh = prep.key_owner.state_dict()
    want, want_summary, _ = _train(tmp_path, "fork", prep, fresh, "--executor", "fork")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                            "object_store_memory": 200 * MB})
    try:
        cluster.add_node(num_cpus=1, object_store_memory=200 * MB)
        cluster.wait_for_nodes(timeout=60)
        got, summary, log = _train(tmp_path, "ray", prep, fresh, "--executor", "ray", "--ray-address",
                                   cluster.address)
    finally:
        cluster.shutdown()
    assert "Ray executor: joined" in log and "2 node(s), 2 CPUs" in log  # the shares went to the cluster
    assert summary["steps"] == want_summary["steps"] == 2 and summary["refreshes_per_step"] > 0
    assert torch.equal(got.weight, want.weight) and torch.equal(got.bias, want.bias)
