"""The training job a client submits: validated settings, and the builders that turn it into objects.

A job is a JSON object (docs/protocol.md). ``model`` picks a builder: ``"hetal-linear"`` is
HETAL's encrypted linear classifier; ``TrainingServer(builders=...)`` can add others. Both sides
read this module: the server builds the job's model from it, the key owner its own copy of the
job's refresh plan (``client.policy.plan_job``), and ``hetal`` its in-process reference run.
It holds no key and imports neither side.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from ..approx.softmax import SOFTMAX_PRESETS, SoftmaxConfig
from ..nn.linear import Linear
from ..nn.loss import CrossEntropyLoss, KeyOwnerCrossEntropyLoss
from ..optim import from_name as optim_from_name
from ..optim.optimizer import EncOptimizer
from ..protocol.errors import JobConfigError
from ..tensor.enctensor import EncTensor

Builder = Callable[[Any, dict[str, Any], dict[str, EncTensor], tuple[int, int]], tuple[Any, EncOptimizer, Any]]

OPTIMIZERS = ("nesterov", "nag", "sgd")
EXACT_SOFTMAX = "exact"
"""The job's ``softmax`` for the opt-in protocol: the key owner evaluates the exact softmax
(``nn.KeyOwnerCrossEntropyLoss``); the training labels stay with it. Any other value names one of
HETAL's approximations (``SoftmaxConfig.preset``), the default and non-interactive path."""
_FIELDS: dict[str, tuple[type, ...]] = {
    "model": (str,), "in_features": (int,), "out_features": (int,), "bias": (bool,), "optimizer": (str,),
    "lr": (int, float), "momentum": (int, float), "epochs": (int,), "max_steps": (int, type(None)),
    "seed": (int,), "checkpoint_every": (int,), "softmax": (str,),
}
DEFAULTS: dict[str, Any] = {"bias": True, "optimizer": "nesterov", "momentum": 0.9, "max_steps": None,
                            "seed": 0, "checkpoint_every": 1, "softmax": "default"}


def validate_job(job: Any, builders: dict[str, Builder]) -> dict[str, Any]:
    """The job with defaults filled in; JobConfigError naming the first bad field."""
    if not isinstance(job, dict):
        raise JobConfigError("a job is a JSON object")
    job = {**DEFAULTS, **job}
    unknown, missing = set(job) - set(_FIELDS), set(_FIELDS) - set(job)
    if unknown or missing:
        raise JobConfigError(f"job fields: unknown {sorted(unknown)}, missing {sorted(missing)}")
    for name, types in _FIELDS.items():
        if type(job[name]) not in types:
            raise JobConfigError(f"job field {name!r}: expected {' or '.join(t.__name__ for t in types)}, "
                                 f"got {type(job[name]).__name__}")
    checks = [
        (job["model"] in builders, f"unknown model {job['model']!r}; this server builds {sorted(builders)}"),
        (job["optimizer"] in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}"),
        (job["softmax"] in (*SOFTMAX_PRESETS, EXACT_SOFTMAX),
         f"softmax must be one of {SOFTMAX_PRESETS} (SoftmaxConfig.preset) or {EXACT_SOFTMAX!r} (the key owner's)"),
        (1 <= job["in_features"] <= 1 << 20 and 1 <= job["out_features"] <= 1 << 12, "feature/class counts"),
        (math.isfinite(job["lr"]) and 0 < job["lr"] <= 1e3, "lr must be in (0, 1000]"),
        (math.isfinite(job["momentum"]) and 0 <= job["momentum"] < 1, "momentum must be in [0, 1)"),
        (1 <= job["epochs"] <= 100_000, "epochs must be in [1, 100000]"),
        (job["max_steps"] is None or 1 <= job["max_steps"] <= 1 << 30, "max_steps must be ≥ 1 or null"),
        (0 <= job["seed"] < 2**63 and 0 <= job["checkpoint_every"] <= 1 << 30, "seed/checkpoint_every range"),
    ]
    for ok, what in checks:
        if not ok:
            raise JobConfigError(what)
    return job


def make_optimizer(job: dict[str, Any], params: Any) -> EncOptimizer:
    """The job's optimizer (``optim.from_name``), the same for a remote run and an in-process one."""
    return optim_from_name(job["optimizer"], params, lr=job["lr"], momentum=job["momentum"])


def build_hetal_linear(ctx: Any, job: dict[str, Any], init: dict[str, EncTensor],
                       unit: tuple[int, int]) -> tuple[Linear, EncOptimizer, Any]:
    """HETAL's linear classifier over the data's unit shape, starting from the client's encrypted weights."""
    model = Linear(job["in_features"], job["out_features"], bias=job["bias"], init="zeros")
    model.encrypt(ctx, unit=unit)  # public zeros; replaced by the client's initial weights below
    model.load_state_dict(init)
    return model, make_optimizer(job, model.parameters()), make_criterion(job)


def softmax_config(job: dict[str, Any]) -> SoftmaxConfig:
    """The SoftmaxConfig whose domains the key owner's guard checks for this job (the default's
    for the exact softmax, which has no domain: only the weights' stages are guarded then)."""
    name = job.get("softmax", "default")
    return SoftmaxConfig() if name == EXACT_SOFTMAX else SoftmaxConfig.preset(name)


def make_criterion(job: dict[str, Any]) -> Any:
    """The job's loss: HETAL's approximate softmax cross-entropy, or the key owner's exact one."""
    if job["softmax"] == EXACT_SOFTMAX:
        return KeyOwnerCrossEntropyLoss()
    return CrossEntropyLoss(SoftmaxConfig.preset(job["softmax"]))


BUILDERS: dict[str, Builder] = {"hetal-linear": build_hetal_linear}
