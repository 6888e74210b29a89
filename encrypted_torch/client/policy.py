"""What the key owner agrees to answer: its own copy of the job, enforced on every request.

The key owner is an oracle the server can call, so it answers only what the job it submitted
plans (docs/design.md, "Threat model"): each epoch is judged once, in order, within the job's
epochs and never after a stop; validation logits must have the planned layouts; refreshes must
match the job's refresh plan (``training.refresh_plan``) by stage and level, with a replay
allowance for each resume after a lost connection. The first violation ends the job for good:
every later request is refused too, so a refusal is one bit per job, not a new oracle.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch

from ..data.dataset import EncDataset
from ..errors import EncTorchError, JobPolicyError
from ..storage.dataset import Manifest
from ..tensor.enctensor import encrypt
from ..tensor.layout import BlockLayout
from ..training.job import BUILDERS, validate_job
from ..training.refresh_plan import RefreshPlan, plan_refreshes

#: Resumes (reconnects that replay work) a job may ask for; each allows one checkpoint window again.
MAX_RESUMES = 16


class KeyOwnerPolicy:
    """Verdict records and the refresh budget of one job (``plan`` None: verdict rules only)."""

    def __init__(self, plan: RefreshPlan | None = None, *, replay_steps: int = 1,
                 max_resumes: int = MAX_RESUMES) -> None:
        self.plan, self.replay_steps, self.max_resumes = plan, max(1, replay_steps), max_resumes
        self.verdicts: dict[int, bool] = {}
        self.used: Counter = Counter()  # (stage, level) → ciphertexts since the last new verdict
        self.resumes = 0
        self.allowance: Counter = Counter()
        self.ended: str | None = None

    def end(self, err: EncTorchError) -> EncTorchError:
        """Record that the job ended with ``err`` (returned, to be raised)."""
        if self.ended is None:
            self.ended = f"{type(err).__name__}: {err}"
        return err

    def check_open(self) -> None:
        if self.ended is not None:
            raise JobPolicyError(f"the key owner ended this job ({self.ended}); it answers nothing more. "
                                 "Start a new job (after fixing the cause) to train again")

    def refuse(self, what: str) -> JobPolicyError:
        return self.end(JobPolicyError(f"refused: {what}; the key owner ends the job"))  # type: ignore[return-value]

    def check_refresh(self, stage: str, levels: Sequence[int]) -> None:
        """Count a refresh request against the plan; JobPolicyError (and the job ends) beyond it.

        A ciphertext may come at its planned level or below it: a server may always mod-switch what
        it sends down (with the ``trim`` cut it sends every request at level 0, the fewest bytes), so a
        lower level grants it nothing. Each one takes the lowest planned level at or above its own
        that has room left (greedy, which for these nested choices fits whenever any assignment does).
        """
        self.check_open()
        if self.plan is None:
            return
        if self.stopped:
            raise self.refuse(f"a refresh after training stopped at epoch {max(self.verdicts)}")
        planned = sorted({lv for s, lv in (*self.plan.per_epoch, *self.allowance) if s == stage})
        limit = {lv: self.plan.per_epoch.get((stage, lv), 0) + self.allowance[(stage, lv)] for lv in planned}
        taken: Counter = Counter()
        for lv in sorted(levels):
            room = [p for p in planned if p >= lv and self.used[(stage, p)] + taken[(stage, p)] < limit[p]]
            if not room:
                above = [p for p in planned if p >= lv]
                asked = sum(self.used[(stage, p)] + taken[(stage, p)] for p in above) + 1
                plans = sum(self.plan.per_epoch.get((stage, p), 0) for p in above)
                extra = sum(self.allowance[(stage, p)] for p in above)
                raise self.refuse(f"{asked} ciphertext(s) at stage {stage!r}, level {lv} or above in one epoch; "
                                  f"the job plans {plans}{f' (+{extra} replay)' if extra else ''}")
            taken[(stage, room[0])] += 1
        self.used.update(taken)

    def resumed(self) -> None:
        """The connection was lost and the server continues from a checkpoint: allow one window again."""
        self.check_open()
        self.resumes += 1
        if self.resumes > self.max_resumes:
            raise self.refuse(f"{self.resumes} resumes in one job (at most {self.max_resumes})")
        if self.plan is not None:
            for key, n in self.plan.per_step.items():
                self.allowance[key] += n * self.replay_steps
            for key, n in self.plan.validation.items():
                self.allowance[key] += n

    @property
    def stopped(self) -> bool:
        return any(self.verdicts.values())

    def recorded_verdict(self, epoch: int) -> bool | None:
        """The stop bit already given for ``epoch`` (a replay), or None for the next new epoch."""
        self.check_open()
        if epoch in self.verdicts:
            return self.verdicts[epoch]
        expected = len(self.verdicts)
        if self.stopped:
            raise self.refuse(f"a verdict for epoch {epoch} after training stopped at epoch {max(self.verdicts)}")
        if epoch != expected:
            raise self.refuse(f"a verdict for epoch {epoch} while epoch {expected} is the next one")
        if self.plan is not None and epoch >= self.plan.epochs:
            raise self.refuse(f"a verdict for epoch {epoch}; the job has {self.plan.epochs} epoch(s)")
        return None

    def check_epoch_end(self, val_layouts: Sequence[BlockLayout], state: dict[str, BlockLayout]) -> None:
        """The validation logits and the state to refresh must have the planned layouts."""
        self.check_open()
        if self.plan is None:
            return
        if tuple(val_layouts) != self.plan.val_layouts:
            raise self.refuse(f"validation logits {[lay.describe() for lay in val_layouts][:4]}; the job plans "
                              f"{[lay.describe() for lay in self.plan.val_layouts][:4]}")
        unknown = {k: lay for k, lay in state.items() if self.plan.state_layouts.get(k) != lay}
        if unknown:
            raise self.refuse(f"epoch-end state {sorted(unknown)[:4]} not in the job's plan")

    def record_verdict(self, epoch: int, stop: bool) -> None:
        self.verdicts[epoch] = stop
        self.used.clear()
        self.allowance.clear()

    def state_dict(self) -> dict[str, Any]:
        return {"verdicts": {str(e): s for e, s in self.verdicts.items()},
                "used": [[k[0], k[1], n] for k, n in self.used.items()],
                "allowance": [[k[0], k[1], n] for k, n in self.allowance.items()],
                "resumes": self.resumes, "ended": self.ended}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.verdicts = {int(e): bool(s) for e, s in state["verdicts"].items()}
        self.used = Counter({(str(s), int(lv)): int(n) for s, lv, n in state["used"]})
        self.allowance = Counter({(str(s), int(lv)): int(n) for s, lv, n in state["allowance"]})
        self.resumes = int(state["resumes"])
        self.ended = None if state["ended"] is None else str(state["ended"])


def plan_job(ctx: Any, job: dict[str, Any], init: dict[str, Any], train: Manifest | EncDataset,
             val: Manifest | EncDataset, builders: dict[str, Any] | None = None) -> RefreshPlan:
    """The refresh plan of a server job on these datasets (manifests or the encrypted sets), from the
    client's own copy of the job and of its builder (``training.job.BUILDERS`` unless given)."""
    builders = BUILDERS if builders is None else builders
    job = validate_job(job, builders)
    steps = len(train.batches) if job["max_steps"] is None else min(len(train.batches), job["max_steps"])

    def build(null: Any) -> tuple[Any, Any, Any]:
        zeros = {k: encrypt(torch.zeros(v.shape), null, layout=v.layout) for k, v in init.items()}
        return builders[job["model"]](null, job, zeros, train.unit)

    return plan_refreshes(ctx, build, unit=train.unit, num_features=train.num_features,
                          num_classes=train.num_classes, train_rows=[b.rows for b in train.batches],
                          val_rows=[b.rows for b in val.batches], steps_per_epoch=steps, epochs=job["epochs"])


def replay_steps(job: dict[str, Any], train: Manifest) -> int:
    """Steps a resume may redo: the checkpoint interval (0: no step checkpoints, a whole epoch)."""
    return int(job.get("checkpoint_every", 1)) or len(train.batches)
