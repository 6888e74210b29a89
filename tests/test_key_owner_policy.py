"""KeyOwnerPolicy's budget arithmetic on a hand-made plan: the resume allowance, its cap, and its state.

The mutation run found ``resumed`` reached by no test (the attacks never reconnect): each rule here is
pinned with exact counts, so an off-by-one in the allowance or the cap fails.
"""

from __future__ import annotations

import pytest
import torch

from encrypted_torch.client.policy import MAX_RESUMES, KeyOwnerPolicy
from encrypted_torch.errors import JobPolicyError
from encrypted_torch.tensor.layout import BlockLayout
from encrypted_torch.training.refresh_plan import RefreshPlan

STAGE = ("softmax max (round input)", 0)
VAL = ("DiagABT (x @ w.T)", 2)
PLAN = RefreshPlan(epochs=3, steps_per_epoch=4, per_epoch={STAGE: 8, ("refresh", 0): 4, VAL: 3},
                   per_step={STAGE: 2, ("refresh", 0): 1}, validation={VAL: 3},
                   val_layouts=(BlockLayout((8, 3), (8, 512), "horizontal"),), state_layouts={})


def test_an_epoch_gets_exactly_its_plan():
    policy = KeyOwnerPolicy(PLAN)
    policy.check_refresh(STAGE[0], [0] * 8)
    with pytest.raises(JobPolicyError, match="9 ciphertext"):
        policy.check_refresh(STAGE[0], [0])


def test_a_resume_allows_one_checkpoint_window_more():
    policy = KeyOwnerPolicy(PLAN, replay_steps=3)
    policy.check_refresh(STAGE[0], [0] * 8)
    policy.resumed()
    policy.check_refresh(STAGE[0], [0] * 6)  # 3 replayed steps × 2
    with pytest.raises(JobPolicyError, match="replay"):
        policy.check_refresh(STAGE[0], [0])


def test_resumes_add_up_and_include_the_validation_pass():
    policy = KeyOwnerPolicy(PLAN, replay_steps=1)
    policy.check_refresh(STAGE[0], [0] * 8)
    policy.check_refresh(VAL[0], [VAL[1]] * 3)
    policy.resumed()
    policy.resumed()
    policy.check_refresh(STAGE[0], [0] * 4)  # two windows of one step × 2
    policy.check_refresh(VAL[0], [VAL[1]] * 6)  # and two validation passes × 3
    for stage, level in (STAGE, VAL):
        with pytest.raises(JobPolicyError):
            KeyOwnerPolicy(PLAN).check_refresh(stage, [level] * 20)
    with pytest.raises(JobPolicyError):
        policy.check_refresh(VAL[0], [VAL[1]])


def test_the_allowance_ends_with_the_epoch():
    policy = KeyOwnerPolicy(PLAN)
    policy.resumed()
    assert policy.recorded_verdict(0) is None
    policy.record_verdict(0, False)
    policy.check_refresh(STAGE[0], [0] * 8)
    with pytest.raises(JobPolicyError):
        policy.check_refresh(STAGE[0], [0])


def test_resumes_are_capped():
    policy = KeyOwnerPolicy(PLAN)
    for _ in range(MAX_RESUMES):
        policy.resumed()
    with pytest.raises(JobPolicyError, match=f"{MAX_RESUMES + 1} resumes"):
        policy.resumed()
    with pytest.raises(JobPolicyError, match="ended this job"):
        policy.check_refresh(STAGE[0], [0])


def test_unplanned_stages_and_levels_above_the_plan_are_refused():
    for stage, level in [(STAGE[0], 1), (VAL[0], VAL[1] + 1), ("DiagATB (g.T @ x)", 0)]:
        with pytest.raises(JobPolicyError, match="plans 0"):
            KeyOwnerPolicy(PLAN).check_refresh(stage, [level])


def test_a_request_below_its_planned_level_takes_that_levels_budget():
    """A server may mod-switch a request down (the trim cut sends them all at level 0): it counts
    against the lowest planned level at or above its own, and the stage's budget stays the same."""
    plan = RefreshPlan(epochs=1, steps_per_epoch=1, per_epoch={("refresh", 0): 2, ("refresh", 4): 3},
                       per_step={}, validation={}, val_layouts=(), state_layouts={})
    policy = KeyOwnerPolicy(plan)
    policy.check_refresh("refresh", [0, 0, 0, 4])  # two at 0, then one at 0 and one at 4 take level 4's
    assert policy.used == {("refresh", 0): 2, ("refresh", 4): 2}
    with pytest.raises(JobPolicyError, match="4 ciphertext.*level 4 or above.*plans 3"):
        policy.check_refresh("refresh", [4, 4])
    fresh = KeyOwnerPolicy(plan)
    fresh.check_refresh("refresh", [0] * 5)
    with pytest.raises(JobPolicyError, match="6 ciphertext.*level 0 or above.*plans 5"):
        fresh.check_refresh("refresh", [0])


def test_the_policy_state_round_trips():
    policy = KeyOwnerPolicy(PLAN, replay_steps=2)
    policy.check_refresh(STAGE[0], [0] * 5)
    policy.resumed()
    policy.record_verdict(0, False)
    policy.check_refresh("refresh", [0, 0])
    restored = KeyOwnerPolicy(PLAN, replay_steps=2)
    restored.load_state_dict(policy.state_dict())
    assert restored.state_dict() == policy.state_dict()
    assert restored.verdicts == {0: False} and restored.resumes == 1 and restored.used[("refresh", 0)] == 2
    restored.check_refresh("refresh", [0, 0])
    with pytest.raises(JobPolicyError):
        restored.check_refresh("refresh", [0])
    ended = KeyOwnerPolicy(PLAN)
    ended.end(JobPolicyError("boom"))
    again = KeyOwnerPolicy(PLAN)
    again.load_state_dict(ended.state_dict())
    with pytest.raises(JobPolicyError, match="boom"):
        again.check_open()


def test_a_smaller_last_batch_is_planned_too():
    """(1280 features, 4 classes, batches 64, 64, 19 on preset "test"): the 19-row batch's softmax takes a
    path the full batches do not ('softmax normalize' at level 0); the plan dry-runs the real sizes too."""
    import encrypted_torch as et
    from encrypted_torch.client import KeyOwner
    from encrypted_torch.client.policy import plan_job
    from encrypted_torch.nn.linear import Linear
    from encrypted_torch.storage.dataset import StreamingLoader
    from encrypted_torch.training import EarlyStopping, Trainer
    from encrypted_torch.training.job import BUILDERS, build_hetal_linear, validate_job

    secret = et.SecretContext.create("test", backend="plain")
    d, c = 1280, 4
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(147, d, generator=g, dtype=torch.float64), dim=1)
    y = torch.randint(0, c, (147,), generator=g)
    owner = KeyOwner(secret, EarlyStopping(patience=5))
    train = owner.encrypt_dataset(x, y, num_classes=c, batch_size=64)
    val = owner.encrypt_dataset(x[:30], y[:30], num_classes=c, batch_size=64, name="val", keep_labels=True)
    assert [b.rows for b in train] == [64, 64, 19]
    model0 = Linear(d, c, init="zeros").encrypt(owner.public_context, unit=train.unit)
    init = {"weight_bias": model0.weight_bias.detach()}
    job = validate_job({"model": "hetal-linear", "in_features": d, "out_features": c, "lr": 1.0, "epochs": 2},
                       BUILDERS)
    plan = plan_job(owner.public_context, job, init, train, val)
    assert ("softmax normalize", 0) in plan.per_epoch
    owner.expect(plan)
    model, opt, crit = build_hetal_linear(owner.public_context, job, init, train.unit)
    result = Trainer(model, opt, owner, crit, progress=False).fit(StreamingLoader(train, seed=0), val, 2, resume=True)
    assert result.epochs_run == 2
