"""A malicious server against the unmodified client library: what the key owner answers, and no more.

The server here is written from the protocol's messages only (no TrainingServer): it takes the
client's uploads, then instead of training it asks the key owner whatever an attacker would —
replayed epoch ends with crafted logits (label recovery), a threshold search on a training
feature rotated into a logit, refresh floods, verdicts after a stop or beyond the job. The client
is ``RemoteSession`` + ``KeyOwner`` exactly as users run them (plaintext backend: exact and fast).
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from websockets.sync.server import serve

import encrypted_torch as et
from encrypted_torch.ckks.public import PublicContext
from encrypted_torch.client import KeyOwner
from encrypted_torch.client.remote import RemoteSession, RetryPolicy
from encrypted_torch.errors import DomainError, EncTorchError, JobPolicyError
from encrypted_torch.nn.linear import Linear
from encrypted_torch.protocol.channel import server_handshake
from encrypted_torch.protocol.errors import RemoteError
from encrypted_torch.protocol.messages import (
    Ack,
    DatasetBegin,
    DatasetEnd,
    FileBegin,
    FileChunk,
    FileEnd,
    StartTraining,
    Welcome,
)
from encrypted_torch.server.link import NetworkKeyOwner
from encrypted_torch.storage.atomic import atomic_write_json
from encrypted_torch.storage.dataset import MANIFEST, Manifest, open_dataset
from encrypted_torch.tensor.layout import BlockLayout
from encrypted_torch.training import EarlyStopping

TOKEN = "adversarial-test-token-0123456789"
FEATURES, CLASSES, BATCH = 8, 4, 16
JOB = {"model": "hetal-linear", "in_features": FEATURES, "out_features": CLASSES, "lr": 0.5, "epochs": 40,
       "optimizer": "sgd", "checkpoint_every": 1}


class Attack:
    """What the malicious server learnt: the key owner's answers and the error that ended the job."""

    def __init__(self) -> None:
        self.bits: list[bool] = []
        self.error: BaseException | None = None
        self.info: dict[str, Any] = {}


@contextlib.contextmanager
def malicious_server(workdir: Path, script: Callable[[NetworkKeyOwner, Any, dict, Attack], None]):
    """A server that accepts the uploads, then runs ``script(link, train, job, attack)``."""
    attack = Attack()
    served: list[bool] = []

    def handle(ws: Any) -> None:
        if served:  # one connection: a reconnecting client finds the attack over
            ws.close()
            return
        served.append(True)
        try:
            channel, _ = server_handshake(ws, TOKEN.encode(), 64 << 20, 1 << 20, 10)
            have = {"public_context": False, "train": False, "val": False, "job": False}
            channel.send(Welcome("ab" * 16, {"stage": "upload", "fingerprint": None, "have": have,
                                             "checkpoint": None, "summary": None}))
            files: dict[str, bytes] = {}
            manifests: dict[str, dict] = {}
            while True:
                msg = channel.recv(30)
                if isinstance(msg, FileBegin):
                    data = b""
                    while not isinstance(chunk := channel.recv(30), FileEnd):
                        assert isinstance(chunk, FileChunk)
                        data += chunk.data
                    assert hashlib.sha256(data).hexdigest() == msg.sha256
                    files[msg.target] = data
                    channel.send(Ack(msg.target, {}))
                elif isinstance(msg, DatasetBegin):
                    manifests[msg.name] = msg.manifest
                    channel.send(Ack("dataset_begin", {}))
                elif isinstance(msg, DatasetEnd):
                    channel.send(Ack(msg.name, {}))
                elif isinstance(msg, StartTraining):
                    break
            ctx = PublicContext.from_bytes(files["public_context"])
            directory = workdir / "train"
            directory.mkdir()
            for target, data in files.items():
                if target.startswith("dataset/train/"):
                    (directory / target.split("/")[-1]).write_bytes(data)
            atomic_write_json(directory / MANIFEST, manifests["train"])
            train = open_dataset(directory, ctx)
            script(NetworkKeyOwner(channel, ctx, 30), train, msg.job, attack)
        except BaseException as err:  # noqa: BLE001 (what ended the attack is the test's evidence)
            attack.error = err

    with serve(handle, "127.0.0.1", 0, max_size=None) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"ws://127.0.0.1:{server.socket.getsockname()[1]}", attack
        finally:
            server.shutdown()
            thread.join(5)


def client_data(seed: int = 0, patience: int = 3, secret: et.SecretContext | None = None):
    """The honest client's key owner, datasets (16 validation labels) and initial model."""
    secret = secret or et.SecretContext.create("test", backend="plain")
    owner = KeyOwner(secret, EarlyStopping(patience=patience))
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(4 * BATCH, FEATURES, generator=g, dtype=torch.float64)
    y = torch.randint(0, CLASSES, (4 * BATCH,), generator=g)
    train = owner.encrypt_dataset(x[: 3 * BATCH], y[: 3 * BATCH], num_classes=CLASSES, batch_size=BATCH)
    val = owner.encrypt_dataset(x[3 * BATCH :], y[3 * BATCH :], num_classes=CLASSES, batch_size=BATCH,
                                name="val", keep_labels=True, shuffle=False)
    model = Linear(FEATURES, CLASSES, init="zeros").encrypt(owner.public_context, unit=train.unit)
    return owner, train, val, {"weight_bias": model.weight_bias.detach()}, y[3 * BATCH :]


def run_client(url: str, owner: KeyOwner, train: Any, val: Any, init: dict,
               job: dict | None = None) -> BaseException | None:
    """The unmodified client library; returns what it raised (None if training 'finished')."""
    session = RemoteSession(url, TOKEN, owner, timeout=30, retry=RetryPolicy(attempts=1, deadline=1))
    try:
        session.connect()
        session.upload(train, val)
        session.train(job or JOB, init)
    except (EncTorchError, OSError) as err:
        return err
    return None


def logits_like(ctx: Any, values: torch.Tensor, unit: tuple[int, int]) -> et.EncTensor:
    return et.encrypt(values, ctx, layout=BlockLayout(tuple(values.shape), unit, "horizontal"))


def state_of(ctx: Any, unit: tuple[int, int]) -> dict[str, et.EncTensor]:
    w = torch.zeros(CLASSES, FEATURES + 1)
    return {"model.weight_bias": et.encrypt(w, ctx, layout=BlockLayout(tuple(w.shape), unit, "vertical"))}


def test_replayed_epochs_give_the_recorded_bit_so_labels_stay_secret(tmp_path):
    """The finding: zero logits for three epochs, then one crafted logit per replay of epoch 3 read
    16/16 validation labels in 39 queries. Now every replay gets the recorded bit: zero information."""
    owner, train, val, init, labels = client_data()

    def script(link: NetworkKeyOwner, data: Any, job: dict, attack: Attack) -> None:
        ctx, unit = link.ctx, data.unit
        zeros = torch.zeros(BATCH, CLASSES)
        for epoch in range(3):
            attack.bits.append(link.end_epoch(epoch, "val", [logits_like(ctx, zeros, unit)], state_of(ctx, unit)).stop)
        guesses = []
        for i in range(BATCH):
            stops = []
            for k in range(CLASSES):
                crafted = zeros.clone()
                crafted[i, k] = 8.0  # lowers the loss iff label i is k
                stops.append(link.end_epoch(3, "val", [logits_like(ctx, crafted, unit)], state_of(ctx, unit)).stop)
            attack.bits.extend(stops)
            guesses.append(stops.index(False) if False in stops else 0)
        attack.info["guesses"] = torch.tensor(guesses)

    with malicious_server(tmp_path, script) as (url, attack):
        run_client(url, owner, train, val, init)
    assert attack.error is None, attack.error
    replies = attack.bits[3:]
    assert len(replies) == BATCH * CLASSES and len(set(replies)) == 1  # one bit for epoch 3, repeated
    recovered = (attack.info["guesses"] == labels).float().mean().item()
    constant = max((labels == k).float().mean().item() for k in range(CLASSES))
    assert recovered <= constant  # no better than always guessing the most common class
    assert [h["epoch"] for h in owner.history] == [0, 1, 2, 3]  # each epoch judged once


def test_threshold_search_on_a_rotated_training_feature_learns_nothing(tmp_path):
    """The finding: a training feature rotated into a logit, then a binary search on the stop bit over
    replays, recovered it to 1.3e-8 in 34 queries. Now the search sees one constant bit."""
    owner, train, val, init, _ = client_data(patience=1)

    def script(link: NetworkKeyOwner, data: Any, job: dict, attack: Attack) -> None:
        ctx, unit = link.ctx, data.unit
        ev = ctx.evaluator
        zeros = torch.zeros(BATCH, CLASSES)
        link.end_epoch(0, "val", [logits_like(ctx, zeros, unit)], state_of(ctx, unit))
        secret_cipher = data.batches[0].x.blocks[0][0]  # slot 0 holds x[0, 0] of the first batch
        mask = torch.zeros(ctx.slots, dtype=torch.float64)
        mask[0] = 1.0
        lo, hi = 0.0, 1.0
        for _ in range(34):
            mid = (lo + hi) / 2
            logit = ev.add_plain(ev.mul_plain(secret_cipher, mask.numpy()), (-mid * mask).numpy())
            base = logits_like(ctx, zeros, unit)
            probe = base._new([[ev.add(ev.mod_switch(base.blocks[0][0], logit.level), logit)]])
            stop = link.end_epoch(1, "val", [probe], state_of(ctx, unit)).stop
            attack.bits.append(stop)
            lo, hi = (lo, mid) if stop else (mid, hi)
        attack.info["estimate"] = (lo + hi) / 2

    with malicious_server(tmp_path, script) as (url, attack):
        run_client(url, owner, train, val, init)
    assert len(set(attack.bits)) == 1 and len(attack.bits) == 34
    assert attack.info["estimate"] in (2**-35, 1 - 2**-35)  # driven by a constant bit, not by the feature


@pytest.mark.parametrize("attack_kind", ["flood", "unplanned_level", "after_stop", "beyond_job", "skip_epoch",
                                         "wrong_logits"])
def test_unplanned_requests_are_refused_and_end_the_job(tmp_path, attack_kind):
    """Anything the client's own copy of the job does not plan is refused with a typed error, and
    every later request is refused too (a refusal cannot be queried again)."""
    owner, train, val, init, _ = client_data(patience=5 if attack_kind == "beyond_job" else 1)

    def script(link: NetworkKeyOwner, data: Any, job: dict, attack: Attack) -> None:
        ctx, unit = link.ctx, data.unit
        zeros = torch.zeros(BATCH, CLASSES)
        ask = lambda e, t=zeros: link.end_epoch(e, "val", [logits_like(ctx, t, unit)], state_of(ctx, unit))  # noqa: E731
        if attack_kind == "flood":
            low = ctx.evaluator.mod_switch(data.batches[0].x.blocks[0][0], 0)
            link.refresh([low] * 200, stage="softmax max (round input)")
        elif attack_kind == "unplanned_level":
            link.trim = False  # (an honest link sends requests at level 0 when trimming)
            link.refresh([data.batches[0].x.blocks[0][0]], stage="refresh")  # a top-level training cipher
        elif attack_kind == "after_stop":
            ask(0)
            attack.bits.append(ask(1).stop)  # no improvement with patience 1: stop
            ask(2)
        elif attack_kind == "beyond_job":
            for e in range(job["epochs"] + 1):
                ask(e)
        elif attack_kind == "skip_epoch":
            ask(0)
            ask(5)
        elif attack_kind == "wrong_logits":
            link.end_epoch(0, "val", [logits_like(ctx, torch.zeros(BATCH, 2 * CLASSES), unit)], state_of(ctx, unit))

    job = {**JOB, "epochs": 2} if attack_kind == "beyond_job" else JOB
    with malicious_server(tmp_path, script) as (url, attack):
        client_error = run_client(url, owner, train, val, init, job)
    assert isinstance(client_error, JobPolicyError), client_error
    assert isinstance(attack.error, RemoteError) and "JobPolicyError" in str(attack.error)
    with pytest.raises(JobPolicyError, match="ended this job"):
        owner.best_state()
    with pytest.raises(JobPolicyError, match="ended this job"):
        owner.refresh([], stage="softmax max (round input)")


@pytest.mark.parametrize("attack_kind", ["gradient_in_hetal_job", "gradient_flood", "validation_labels",
                                         "batch_beyond_set"])
def test_softmax_gradient_requests_beyond_the_exact_job_are_refused(tmp_path, attack_kind):
    """The exact-softmax protocol's requests are held to the client's own job like refreshes: none in
    a HETAL job, at most the planned number per epoch, only for training batches whose labels it kept."""
    from encrypted_torch.data import KeptLabels

    exact = attack_kind != "gradient_in_hetal_job"
    secret = et.SecretContext.create("test", backend="plain")
    owner = KeyOwner(secret, EarlyStopping(patience=3))
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4 * BATCH, FEATURES, generator=g, dtype=torch.float64)
    y = torch.randint(0, CLASSES, (4 * BATCH,), generator=g)
    train = owner.encrypt_dataset(x[: 3 * BATCH], y[: 3 * BATCH], num_classes=CLASSES, batch_size=BATCH,
                                  keep_labels=exact)
    val = owner.encrypt_dataset(x[3 * BATCH :], y[3 * BATCH :], num_classes=CLASSES, batch_size=BATCH,
                                name="val", keep_labels=True, shuffle=False)
    model = Linear(FEATURES, CLASSES, init="zeros").encrypt(owner.public_context, unit=train.unit)
    init = {"weight_bias": model.weight_bias.detach()}

    def script(link: NetworkKeyOwner, data: Any, job: dict, attack: Attack) -> None:
        logits = logits_like(link.ctx, torch.zeros(BATCH, CLASSES), data.unit).mod_switch_to(0)  # as DiagABT gives them
        if attack_kind == "validation_labels":
            link.softmax_gradient(logits, KeptLabels("val", 0, BATCH))
        elif attack_kind == "batch_beyond_set":
            link.softmax_gradient(logits, KeptLabels("train", 3, BATCH))
        else:  # one more than an epoch's steps (3): the fourth is refused
            for i in range(4):
                link.softmax_gradient(logits, KeptLabels("train", i % 3, BATCH))
                attack.bits.append(True)

    job = {**JOB, "softmax": "exact"} if exact else JOB
    with malicious_server(tmp_path, script) as (url, attack):
        client_error = run_client(url, owner, train, val, init, job)
    assert isinstance(client_error, JobPolicyError), client_error
    assert isinstance(attack.error, RemoteError) and "JobPolicyError" in str(attack.error)
    assert len(attack.bits) == (3 if attack_kind == "gradient_flood" else 0), client_error
    with pytest.raises(JobPolicyError, match="ended this job"):
        owner.best_state()


def test_out_of_domain_logits_end_training_with_a_domain_error(tmp_path):
    """Validation logits beyond the softmax's domain: DomainError at the client, reported to the server."""
    owner, train, val, init, _ = client_data()

    def script(link: NetworkKeyOwner, data: Any, job: dict, attack: Attack) -> None:
        link.end_epoch(0, "val", [logits_like(link.ctx, torch.full((BATCH, CLASSES), 520.0), data.unit)],
                       state_of(link.ctx, data.unit))

    with malicious_server(tmp_path, script) as (url, attack):
        client_error = run_client(url, owner, train, val, init)
    assert isinstance(client_error, DomainError) and "520" in str(client_error)
    assert isinstance(attack.error, RemoteError) and "DomainError" in str(attack.error)


def test_manifest_parsing_in_the_malicious_server_matches_the_client(tmp_path):
    """The attack harness itself reads what the client uploaded (guards the tests above)."""
    owner, train, *_ = client_data()
    from encrypted_torch.storage.dataset import write_dataset

    manifest = write_dataset(train, tmp_path / "t")
    assert isinstance(Manifest.from_json(manifest.to_json()), Manifest)


@pytest.mark.parametrize("backend", ["plain", "seal"])
def test_an_honest_run_asks_exactly_its_plan(tmp_path, plain_ctx, seal_ctx, backend):
    """The plan is exact: an honest HETAL run over two worker processes stays within it, and the
    same plan with one ciphertext less at its busiest (stage, level) is refused."""
    from encrypted_torch import parallel
    from encrypted_torch.client.policy import plan_job
    from encrypted_torch.server.job import build_hetal_linear, validate_job
    from encrypted_torch.storage.dataset import StreamingLoader, write_dataset
    from encrypted_torch.training import Trainer
    from encrypted_torch.training.refresh_plan import RefreshPlan

    secret = plain_ctx if backend == "plain" else seal_ctx
    job = validate_job({**JOB, "epochs": 2, "optimizer": "nesterov"}, {"hetal-linear": build_hetal_linear})

    def fit(plan: RefreshPlan | None) -> KeyOwner:
        owner, train, val, init, _ = client_data(secret=secret)
        if plan is None:
            plan = plan_job(secret.public(), job, init, write_dataset(train, tmp_path / f"t{len(seen)}"),
                            write_dataset(val, tmp_path / f"v{len(seen)}"))
        seen.append(plan)
        owner.expect(plan)
        model, opt, crit = build_hetal_linear(owner.public_context, job, init, train.unit)
        with parallel.use_workers(2):
            Trainer(model, opt, owner, crit, progress=False).fit(StreamingLoader(train, seed=0), val, job["epochs"])
        return owner

    seen: list[RefreshPlan] = []
    owner = fit(None)
    plan = seen[0]
    assert [h["epoch"] for h in owner.history] == [0, 1] and plan.refreshes_per_epoch > 0
    if backend == "plain":
        busiest = max(plan.per_epoch, key=plan.per_epoch.get)
        tight = RefreshPlan(plan.epochs, plan.steps_per_epoch, {**plan.per_epoch, busiest: plan.per_epoch[busiest] - 1},
                            plan.per_step, plan.validation, plan.val_layouts, plan.state_layouts)
        with pytest.raises(JobPolicyError, match="refused"):
            fit(tight)


def test_the_client_refuses_a_large_frame_from_an_unauthenticated_server(tmp_path):
    """Before the server proves it holds the token (its sealed Welcome), the client accepts 64 KiB frames
    only: a stranger's 1 MiB frame is refused with a typed error, not buffered."""
    from encrypted_torch.protocol.errors import ConnectionLostError, MessageTooLargeError

    def handle(ws: Any) -> None:
        with contextlib.suppress(Exception):
            ws.send(b"\0" * (1 << 20))
            ws.recv(5)

    owner, *_ = client_data()
    with serve(handle, "127.0.0.1", 0) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        session = RemoteSession(f"ws://127.0.0.1:{server.socket.getsockname()[1]}", TOKEN, owner, timeout=10)
        with pytest.raises((MessageTooLargeError, ConnectionLostError)) as caught:
            session.connect()
        server.shutdown()
        thread.join(5)
    assert "closed because a message was over the size limit" in str(caught.value)  # websockets refused it
