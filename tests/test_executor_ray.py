"""The Ray executor against the fork pool, on a local Ray (2 CPUs) and on a 2-node ``ray.cluster_utils.Cluster``
started here: the same ciphertexts bit for bit and the same op counts; the key owner stays in the driver
(no secret byte is sent); a worker killed mid-share is retried, or the map raises WorkerError."""

from __future__ import annotations

import os
import signal
import sys

import numpy as np
import pytest
import ray
import torch
from ray import cloudpickle
from ray.cluster_utils import Cluster
from test_executor import _product_and_softmax

import encrypted_torch as et
from encrypted_torch import parallel
from encrypted_torch.errors import DepthError, KeyRoleError
from encrypted_torch.executors import WorkerError
from encrypted_torch.executors.fork import ForkExecutor
from encrypted_torch.executors.ray_executor import RayExecutor
from encrypted_torch.linalg import diag_abt, diag_atb
from encrypted_torch.refresh import ensure_levels

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import a test module
MB = 1 << 20
TIMEOUT = 120.0  # seconds a map may go without progress


@pytest.fixture(scope="module", params=["local", "cluster"])
def topology(request):
    """Ray on this machine (2 CPUs), then two Ray nodes of 1 CPU each; shut down after the module's tests."""
    options = {"include_dashboard": False, "object_store_memory": 150 * MB}
    if request.param == "local":
        ray.init(num_cpus=2, log_to_driver=False, **options)
        yield "local"
        ray.shutdown()
        return
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, **options})
    cluster.add_node(num_cpus=1, object_store_memory=150 * MB)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes(timeout=60)
        yield "cluster"
    finally:
        ray.shutdown()
        cluster.shutdown()


def _run(executor, ctx, fn, refresher=None, shares=4):
    with parallel.use_executor(executor), parallel.use_workers(shares, min_work=0), \
            et.refresh_with(refresher), et.count_ops() as ops:
        out = fn()
    return out, ops


def _raw(ctx, ciphers):
    backend = ctx.public().backend
    return [backend.handle_to_bytes(c.handle) for c in ciphers]


def _products(ctx):
    rng = np.random.default_rng(11)
    unit = (128, ctx.slots // 128)
    x = et.encrypt(torch.from_numpy(rng.normal(size=(300, 100))), ctx, unit=unit)
    w = et.encrypt(torch.from_numpy(rng.normal(size=(6, 100))), ctx, unit=unit, tiling="vertical")
    g = et.encrypt(torch.from_numpy(rng.normal(size=(300, 6))), ctx, unit=unit, tiling="horizontal")
    return lambda: [*diag_abt(x, w).ciphers(), *diag_atb(g, x, out_scale=0.5).ciphers()]


def test_plain_step_matches_fork(topology, plain_ctx) -> None:
    """Products and a softmax whose shares ask for refreshes: bit-identical, same counts, the same
    key-owner round trips (one per stage for all shares); shares spread over the nodes."""
    fork_owner, ray_owner = _CountingOwner(plain_ctx), _CountingOwner(plain_ctx)
    fork_out, fork_ops = _run(ForkExecutor(), plain_ctx, lambda: _product_and_softmax(plain_ctx), fork_owner)
    executor = RayExecutor(timeout=TIMEOUT)
    ray_out, ray_ops = _run(executor, plain_ctx, lambda: _product_and_softmax(plain_ctx), ray_owner)
    assert _raw(plain_ctx, ray_out) == _raw(plain_ctx, fork_out)
    assert ray_ops.as_dict() == fork_ops.as_dict() and ray_ops.by_level == fork_ops.by_level
    assert ray_owner.calls == fork_owner.calls > 0 and ray_owner.asked == fork_owner.asked
    assert ray_ops.refreshes > 0 and executor.stats.refresh_bytes > 0
    nodes = {node for node, _ in executor.stats.workers}
    assert len(nodes) == (2 if topology == "cluster" else 1)
    # the context was put once for the three maps, and loaded at most once by each worker process
    assert executor.stats.maps == 3 and executor.stats.context_bytes == len(plain_ctx.public().to_bytes())
    assert executor.stats.context_loads <= len(executor.stats.workers)


def test_seal_products_match_fork(topology, seal_ctx) -> None:
    """Real CKKS: the products' ciphertexts are the same bytes as the fork pool's, with the same counts."""
    fn = _products(seal_ctx)
    fork_out, fork_ops = _run(ForkExecutor(), seal_ctx, fn)
    ray_out, ray_ops = _run(RayExecutor(timeout=TIMEOUT), seal_ctx, fn)
    assert _raw(seal_ctx, ray_out) == _raw(seal_ctx, fork_out)
    assert ray_ops.as_dict() == fork_ops.as_dict() and ray_ops.by_level == fork_ops.by_level


def test_no_secret_reaches_a_worker(topology, seal_ctx) -> None:
    """Everything the driver sends (context, functions, shares, refresh answers) is recorded: the secret
    key's bytes are in none of it, though the public key's are; a closure over the secret is refused."""
    record: list[bytes] = []
    executor = RayExecutor(timeout=TIMEOUT, record=record)
    out, ops = _run(executor, seal_ctx, lambda: _product_and_softmax(seal_ctx), seal_ctx)
    assert ops.refreshes > 0 and len(record) > 10
    secret = seal_ctx._owner.secret_bytes()
    public_key = seal_ctx.public()._raw_parts["public_key"]
    assert any(public_key in blob for blob in record)
    assert not any(secret in blob for blob in record)
    assert not any(secret[64:4160] in blob for blob in record)  # nor a stretch of it
    sent = len(record)
    ev = seal_ctx.public().evaluator
    c = seal_ctx.public().encrypt_vector(np.ones(seal_ctx.slots))
    with pytest.raises(KeyRoleError, match="secret key"):
        executor.map(seal_ctx.public(), lambda s: [ev.add(c, seal_ctx.refresh([c])[0])], [0, 1])
    assert len(record) == sent


def _killed_once(fn, marker, victim=1):
    """``fn``, but the worker running share ``victim`` is SIGKILLed the first time it gets there."""
    def run(share):
        out = fn(share)
        if share == victim and not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return out
    return run


def test_a_killed_worker_is_retried_or_a_typed_error(topology, plain_ctx, tmp_path) -> None:
    pub = plain_ctx.public()
    ev = pub.evaluator
    c = pub.encrypt_vector(np.arange(pub.slots) / pub.slots)

    def work(share):
        return [ev.rescale(ev.mul_raw(ev.rotate(c, share + 1), c))]

    expected = _raw(plain_ctx, [x for s in range(4) for x in work(s)])
    executor = RayExecutor(timeout=TIMEOUT)
    out = executor.map(pub, _killed_once(work, str(tmp_path / "a")), list(range(4)))
    assert os.path.exists(tmp_path / "a") and _raw(plain_ctx, [x for part in out for x in part]) == expected
    with pytest.raises(WorkerError, match="lost"):
        RayExecutor(timeout=TIMEOUT, max_retries=0).map(pub, _killed_once(work, str(tmp_path / "b")), [0, 1])

    def fails(share):
        if share:
            raise DepthError("a share", 2, 1)
        return work(share)

    with pytest.raises(DepthError):  # a share's own error arrives as itself
        executor.map(pub, fails, [0, 1])


class _CountingOwner:
    """The key owner, counting the ciphertexts it is asked to refresh."""

    def __init__(self, secret):
        self.secret, self.asked, self.calls = secret, 0, 0

    def refresh(self, ciphers, stage=""):
        self.asked += len(ciphers)
        self.calls += 1
        return self.secret.refresh(ciphers)


def test_a_killed_share_is_retried_without_asking_the_key_owner_again(topology, plain_ctx, tmp_path) -> None:
    """A share killed after its refresh is run again; its repeated request gets the first answer."""
    pub = plain_ctx.public()
    ev = pub.evaluator
    low = [ev.mod_switch(pub.encrypt_vector(np.full(pub.slots, s + 1.0)), 0) for s in range(3)]

    def work(share):
        fresh = ensure_levels([low[share]], 2, "test")[0]
        return [ev.rotate(fresh, share + 1)]

    owner = _CountingOwner(plain_ctx)
    with et.refresh_with(owner):
        out = RayExecutor(timeout=TIMEOUT).map(pub, _killed_once(work, str(tmp_path / "k")), [0, 1, 2],
                                               serve_refreshes=True)
    assert os.path.exists(tmp_path / "k") and owner.asked == 3 and owner.calls == 1  # all three in one round trip
    for s, part in enumerate(out):
        np.testing.assert_array_equal(plain_ctx.decrypt_vector(part[0]).real, np.full(pub.slots, s + 1.0))


def test_a_worker_loads_only_the_ciphertexts_its_share_touches(seal_ctx) -> None:
    """No Ray runtime needed: the wire format alone. A share loads what it uses; a record that does not
    match SEAL's bytes is a WorkerError when the ciphertext is first used."""
    from encrypted_torch.executors import ray_wire

    pub = seal_ctx.public()
    ev = pub.evaluator
    cs = [ev.mod_switch(pub.encrypt_vector(np.full(pub.slots, i + 1.0)), i % 2) for i in range(4)]
    packed = ray_wire.dumps(lambda s: [ev.add(cs[s], cs[s])], pub)
    fn, lazies = ray_wire.loads_with_ciphers(packed, pub)
    out = fn(2)
    assert [c.loaded for c in lazies] == [False, False, True, False]
    np.testing.assert_allclose(seal_ctx.decrypt_vector(out[0]).real, 6.0, atol=1e-3)
    data, records, payloads = packed
    fn, _ = ray_wire.loads_with_ciphers((data, [[1 - r[0], r[1], r[2]] for r in records], payloads), pub)
    with pytest.raises(WorkerError, match="level/scale/size"):
        fn(0)
