"""Two processes, client and server, with the server's shares on a 2-node Ray cluster started here
(``--executor ray --ray-address``): the same weights, bit for bit, as the server on the fork pool."""

from __future__ import annotations

import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from ray.cluster_utils import Cluster
from test_server import _env, run_toy, stop

TESTS = Path(__file__).parent
ROOT = TESTS.parent
MB = 1 << 20


def _server(workdir: Path, log: Path, *executor_args: str) -> tuple[subprocess.Popen, int]:
    """``python -m encrypted_torch.server`` with the toy job, cutting even the toy's products into 2 shares."""
    code = (f"import sys; sys.path.insert(0, {str(TESTS)!r}); from test_server import TOY_BUILDERS; "
            "from encrypted_torch.server.__main__ import main; sys.exit(main(sys.argv[1:], TOY_BUILDERS))")
    cmd = [sys.executable, "-c", code, "--port", "0", "--workdir", str(workdir), "--allow-plain-backend",
           *executor_args]
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


def _train(tmp_path: Path, name: str, secret, *executor_args: str) -> torch.Tensor:
    log = tmp_path / f"{name}.log"
    proc, port = _server(tmp_path / name, log, *executor_args)
    try:
        weights, _, summary = run_toy(f"ws://127.0.0.1:{port}", secret)
    finally:
        stop(proc)
    assert summary["steps"] == 12 and summary["refreshes_per_step"] > 0
    return weights, log.read_text()


@pytest.mark.slow  # a 2-node Ray cluster and two server processes: about a minute on 2 cores
def test_server_on_a_ray_cluster_trains_the_same_weights_as_on_fork(tmp_path, plain_ctx) -> None:
    want, _ = _train(tmp_path, "fork", plain_ctx, "--executor", "fork")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                            "object_store_memory": 100 * MB})
    try:
        cluster.add_node(num_cpus=1, object_store_memory=100 * MB)
        cluster.wait_for_nodes(timeout=60)
        got, log = _train(tmp_path, "ray", plain_ctx, "--executor", "ray", "--ray-address", cluster.address)
    finally:
        cluster.shutdown()
    assert "Ray executor: joined" in log and "2 node(s), 2 CPUs" in log  # the shares went to the cluster
    assert torch.equal(got, want)
