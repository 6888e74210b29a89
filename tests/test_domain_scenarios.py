"""The domain guard in training: out-of-domain logits stop SEAL training where the plaintext backend does.

Two findings from issue #12: iris features ×1000 (logits in the hundreds) gave probabilities of
1.8e21 on SEAL with no error; with ``SoftmaxConfig.narrow()`` training diverged silently once the
logits left [−4, 4]. The plaintext backend (checked mode) raises DomainError at those steps; on
SEAL the key owner's guard sees the decrypted values at the softmax's refreshes and must raise
at the same step, naming the stage and the bound.
"""

from __future__ import annotations

import pytest
import torch

import encrypted_torch as et
from encrypted_torch.approx.softmax import SoftmaxConfig
from encrypted_torch.client import KeyOwner
from encrypted_torch.errors import DomainError, JobPolicyError
from encrypted_torch.nn.linear import Linear
from encrypted_torch.nn.loss import CrossEntropyLoss
from encrypted_torch.optim import SGD
from encrypted_torch.training import EarlyStopping, Trainer


def iris_run(secret: et.SecretContext, scale: float, config: SoftmaxConfig, epochs: int):
    """Iris rows scaled to norm ``scale``, HETAL's linear layer, Nesterov SGD; returns (trainer, owner, error)."""
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    order = torch.randperm(150, generator=torch.Generator().manual_seed(0))
    x, y = torch.tensor(x, dtype=torch.float64)[order], torch.tensor(y)[order]
    x = x / x.norm(dim=1, keepdim=True) * scale
    owner = KeyOwner(secret, EarlyStopping(patience=100), softmax_config=config)
    train = owner.encrypt_dataset(x[:96], y[:96], num_classes=3, batch_size=32)
    val = owner.encrypt_dataset(x[96:128], y[96:128], num_classes=3, batch_size=32, name="val", keep_labels=True,
                                shuffle=False)
    torch.manual_seed(0)
    model = Linear(4, 3).encrypt(owner.public_context, unit=train.unit)
    trainer = Trainer(model, SGD(model.parameters(), lr=1.0, momentum=0.9, nesterov=True), owner,
                      CrossEntropyLoss(config), progress=False)
    try:
        trainer.fit(train, val, epochs)
    except DomainError as err:
        return trainer, owner, err
    return trainer, owner, None


@pytest.mark.parametrize("scale, config, epochs", [(1000.0, SoftmaxConfig(), 2), (2.0, SoftmaxConfig.narrow(), 6)],
                         ids=["x1000-default", "narrow"])
def test_seal_training_stops_with_a_domain_error_where_the_plaintext_backend_does(plain_ctx, seal_ctx, scale,
                                                                                 config, epochs):
    plain, _, plain_err = iris_run(plain_ctx, scale, config, epochs)
    sealed, owner, seal_err = iris_run(seal_ctx, scale, config, epochs)
    assert plain_err is not None and seal_err is not None
    assert len(sealed.result.steps) == len(plain.result.steps)  # the same step, and nothing after it
    text = str(seal_err)
    assert "softmax" in text and "domain_radius" in text and "learning rate" in text
    with pytest.raises(JobPolicyError, match="ended this job"):  # the guard's verdict is final
        owner.best_state()


def test_in_domain_training_on_seal_never_trips_the_guard(seal_ctx):
    """The honest side: the same run with features inside the domain trains to the end on SEAL."""
    trainer, owner, err = iris_run(seal_ctx, 1.0, SoftmaxConfig(), 2)
    assert err is None and len(trainer.result.steps) == 6 and [h["epoch"] for h in owner.history] == [0, 1]


def test_across_processes_the_client_ends_the_job_and_the_server_keeps_its_last_good_checkpoint(tmp_path, seal_ctx):
    """Step 0 trains, step 1's logits overflow: the client's guard raises DomainError, reports it to the
    server, and the session keeps the checkpoint of step 0 (nothing after the bad step is saved)."""
    import json

    from sklearn.datasets import load_iris
    from test_server import TOKEN, running_server

    from encrypted_torch.client.remote import RemoteSession, RetryPolicy

    x, y = load_iris(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True) * 30.0
    y = torch.tensor(y)
    owner = KeyOwner(seal_ctx, EarlyStopping(patience=5))
    train = owner.encrypt_dataset(x[:64], y[:64], num_classes=3, batch_size=32)
    val = owner.encrypt_dataset(x[64:96], y[64:96], num_classes=3, batch_size=32, name="val", keep_labels=True)
    torch.manual_seed(0)
    init = {"weight_bias": Linear(4, 3).encrypt(owner.public_context, unit=train.unit).weight_bias.detach()}
    job = {"model": "hetal-linear", "in_features": 4, "out_features": 3, "lr": 1.0, "epochs": 2,
           "optimizer": "nesterov", "checkpoint_every": 1}
    with running_server(tmp_path) as (server, url):
        session = RemoteSession(url, TOKEN, owner, timeout=60, retry=RetryPolicy(attempts=1, deadline=1))
        session.connect()
        session.upload(train, val)
        with pytest.raises(DomainError, match="softmax|validation"):
            session.train(job, init)
        record = json.loads((tmp_path / "sessions" / session.session_id / "session.json").read_text())
    assert record["stage"] == "training" and record["checkpoint"]["step"] == 1 and record["checkpoint"]["epoch"] == 0
    assert (tmp_path / "sessions" / session.session_id / "checkpoint.et").exists()
    with pytest.raises(JobPolicyError, match="ended this job"):
        owner.refresh([], stage="softmax normalize")
