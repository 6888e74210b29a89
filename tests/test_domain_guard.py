"""The domain guard (functional/domain.py) on the plaintext backend.

(a) Honest runs, logits anywhere in [−Rmax, Rmax] (ends included): every stage the softmax and the
fused cross-entropy refresh, forward and backward, has a bound, and no decrypted slot exceeds it.
(b) Logits past the domain (1.3·Rmax, the iris ×1000 case's 520, 4.5–8 for narrow) fail ``check``
at the stage that carries the logits, before any other stage, and the message says what to do.
The key owner's side is a recorder that decrypts, checks, records and re-encrypts each refresh.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

import encrypted_torch as et
from encrypted_torch.functional import SoftmaxConfig, cross_entropy, softmax
from encrypted_torch.functional.domain import StageBounds, representable_bound, stage_bounds
from encrypted_torch.refresh import refresh_with

CONFIGS = {"default": SoftmaxConfig(), "narrow": SoftmaxConfig.narrow(), "hetal": SoftmaxConfig.hetal()}
CLASSES = [2, 3, 10, 16]
PACKED_UNIT = (16, 256)  # several block rows of 16, 256/c_pad tiles each: the softmax packs them

# stage -> (largest |value| seen, its bound), over every honest run of this module
MEASURED: dict[tuple[str, int, str], tuple[float, float]] = {}


class Recorder:
    """The key owner's refresh: decrypt, check against the stage's bound, record, re-encrypt."""

    def __init__(self, secret: et.SecretContext, bounds: StageBounds | None = None) -> None:
        self.secret, self.bounds = secret, bounds
        self.peaks: dict[str, float] = defaultdict(float)

    def refresh(self, ciphers, stage: str = ""):
        for c in ciphers:
            values = self.secret.decrypt_vector(c)
            self.peaks[stage] = max(self.peaks[stage], float(np.max(np.abs(values))))
            if self.bounds is not None:
                self.bounds.check(stage, values)
        return self.secret.refresh(ciphers)


@pytest.fixture(autouse=True)
def _one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENCRYPTED_TORCH_WORKERS", "1")  # shared cores; refreshes stay in this process


def _run(ctx, x: np.ndarray, cfg: SoftmaxConfig, recorder: Recorder, *, level: int, prescaled: bool,
         packed: bool, labels: np.ndarray | None = None) -> None:
    scale = cfg.normalizer if prescaled else 1.0
    unit = PACKED_UNIT if packed else None
    xe = et.encrypt(torch.as_tensor(x * scale), ctx, unit=unit, tiling="horizontal").mod_switch_to(level)
    xe.requires_grad = labels is not None
    with refresh_with(recorder):
        if labels is None:
            softmax(xe, config=cfg, input_scale=scale)
            return
        y = torch.nn.functional.one_hot(torch.as_tensor(labels), x.shape[1]).double()
        ye = et.encrypt(y, ctx, unit=unit, tiling="horizontal").mod_switch_to(0)
        loss = cross_entropy(xe, ye, config=cfg, input_scale=scale)
        loss.backward(0.5)  # a gradient ≠ 1 also refreshes the probabilities for their scale


@st.composite
def honest_cases(draw):
    name = draw(st.sampled_from(sorted(CONFIGS)))
    c = draw(st.sampled_from(CLASSES))
    packed = draw(st.booleans())
    batch = draw(st.integers(17, 40) if packed else st.integers(1, 12))
    r = CONFIGS[name].domain_radius
    kind = draw(st.sampled_from(["uniform", "ends", "one dominates"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if kind == "uniform":
        x = rng.uniform(-r, r, (batch, c))
    elif kind == "ends":
        x = rng.choice([-r, r], (batch, c))
    else:  # the largest row sums: one class at the top, the rest just below (docs/softmax.md §2)
        x = np.full((batch, c), r) - rng.uniform(0, 6, (batch, c))
        x[np.arange(batch), rng.integers(0, c, batch)] = r
    return name, x, draw(st.sampled_from([0, 3])), draw(st.booleans()), packed, draw(st.booleans())


@given(case=honest_cases())
@example(case=("default", np.array([[128.0, -128.0, 128.0]]), 0, False, False, True))
@example(case=("narrow", np.array([[4.0, -4.0] * 5] * 3), 0, False, False, True))
@example(case=("hetal", np.full((20, 16), -128.0), 0, True, True, False))
@example(case=("default", np.array([[-105.7, 128.0, -106.4, -112.1, -107.8, -108.1, -112.6, -108.1,
                                     -109.1, -110.3]]), 3, False, False, True))
def test_honest_runs_stay_within_every_stage_bound(plain_ctx, case):
    name, x, level, prescaled, packed, training = case
    cfg, c = CONFIGS[name], x.shape[1]
    bounds = stage_bounds(cfg, c, input_scale=cfg.normalizer if prescaled else 1.0, params=plain_ctx.params)
    recorder = Recorder(plain_ctx, bounds)
    labels = np.arange(x.shape[0]) % c if training else None
    _run(plain_ctx, x, cfg, recorder, level=level, prescaled=prescaled, packed=packed, labels=labels)
    assert recorder.peaks and "" not in recorder.peaks  # ensure_levels names every stage
    for stage, peak in recorder.peaks.items():
        assert stage in bounds.stages, stage
        assert peak <= bounds.bound(stage), (stage, peak)
        key = (name, c, stage)
        MEASURED[key] = (max(peak, MEASURED.get(key, (0.0, 0.0))[0]), bounds.bound(stage))


def test_measured_peaks_report(capsys):
    """Not an assertion: prints how tight the bounds are (run with -s after the test above)."""
    with capsys.disabled():
        for (name, c, stage), (peak, bound) in sorted(MEASURED.items()):
            print(f"{name:8s} c={c:<3d} {stage:42s} max {peak:10.4g}  bound {bound:10.4g}")


@pytest.mark.parametrize("name, logit, radius", [
    ("default", 1.3 * 128, 256), ("default", 520.0, 1024), ("hetal", 1.3 * 128, 256),
    ("narrow", 4.5, 8), ("narrow", 6.0, 8), ("narrow", 8.0, 8)])
@pytest.mark.parametrize("c", [3, 10])
@pytest.mark.parametrize("prescaled", [False, True])
def test_logits_past_the_domain_fail_at_the_logits_stage(plain_ctx, monkeypatch, name, logit, radius, c,
                                                         prescaled):
    cfg = CONFIGS[name]
    monkeypatch.setattr(plain_ctx.public().backend, "checked", False)  # run on, as CKKS would
    x = np.random.default_rng(c).uniform(-1, 1, (6, c)) * cfg.domain_radius * 0.5
    x[2, 1] = logit
    bounds = stage_bounds(cfg, c, input_scale=cfg.normalizer if prescaled else 1.0)
    recorder = Recorder(plain_ctx, bounds)
    with pytest.raises(et.DomainError) as err:
        _run(plain_ctx, x, cfg, recorder, level=0, prescaled=prescaled, packed=False)
    failed = list(recorder.peaks)[-1]
    assert bounds.stages[failed].logit_unit is not None  # the first refresh, which holds the logits
    message = str(err.value)
    assert failed in message and f"domain_radius={radius}" in message and "learning rate" in message
    assert f"{logit:.4g}" in message


@pytest.mark.parametrize("name, logit", [("default", 1.3 * 128), ("default", 520.0), ("narrow", 4.5)])
def test_fresh_logits_past_the_domain_fail_at_some_stage(plain_ctx, monkeypatch, name, logit):
    """Logits at the top level skip the first refreshes; a later stage still stops the run."""
    cfg = CONFIGS[name]
    monkeypatch.setattr(plain_ctx.public().backend, "checked", False)
    x = np.zeros((4, 10))
    x[1, 3] = logit
    recorder = Recorder(plain_ctx, stage_bounds(cfg, 10))
    with pytest.raises(et.DomainError):
        _run(plain_ctx, x, cfg, recorder, level=3, prescaled=False, packed=False,
             labels=np.arange(4) % 10)


def test_check_rules():
    b = stage_bounds(SoftmaxConfig(), 10, params="test")
    with pytest.raises(et.DomainError, match="non-finite"):
        b.check("softmax row sum", np.array([0.1, np.nan]))
    with pytest.raises(et.DomainError, match="non-finite"):
        b.check("DiagABT (x @ w.T)", np.array([np.inf]))
    b.check("refresh", np.array([200.0, -255.0]))  # not a softmax stage: CKKS's room at level 0
    with pytest.raises(et.DomainError, match="refresh: a value of magnitude 300"):
        b.check("refresh", np.array([300.0]))
    b.check("softmax row sum", np.array([5.0, 0.1]), valid=np.array([False, True]))
    with pytest.raises(et.DomainError, match="softmax row sum: a value of magnitude 5"):
        b.check("softmax row sum", np.array([5.0, 0.1]))
    b.check("softmax normalize", np.full(3, 128.0 + 1j * 1e-6))  # CKKS's imaginary noise
    assert representable_bound("test") == 256.0 and representable_bound("fast") == 2.0**19
    assert representable_bound() == 256.0
