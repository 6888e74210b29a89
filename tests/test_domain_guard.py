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
PACKED_S1 = 256  # with batch > slots/256: several block rows of 256/c_pad tiles, which the softmax packs

# The largest row sum an adversarial search found (docs/softmax.md §2): z ≈ 186, the inverse's edge.
LARGEST_SUM = [-105.7, 128.0, -106.4, -112.1, -107.8, -108.1, -112.6, -108.1, -109.1, -110.3]
# (config, c, prescaled, stage) -> (largest |value| seen, its bound), over the honest runs here
MEASURED: dict[tuple[str, int, bool, str], tuple[float, float]] = {}


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


@pytest.fixture(scope="module")
def plain_fast() -> et.SecretContext:
    """7 levels per ciphertext: other refresh points than 'test' (exp unsplit, other junctions)."""
    return et.SecretContext.create("fast", backend="plain")


@pytest.fixture(autouse=True)
def _one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENCRYPTED_TORCH_WORKERS", "1")  # shared cores; refreshes stay in this process


def _run(ctx, x: np.ndarray, cfg: SoftmaxConfig, recorder: Recorder, *, level: int, prescaled: bool,
         packed: bool, labels: np.ndarray | None = None) -> None:
    scale = cfg.normalizer if prescaled else 1.0
    unit = (ctx.params.slots // PACKED_S1, PACKED_S1) if packed else None
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
    batch = draw(st.integers(33, 80) if packed else st.integers(1, 12))
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
    fresh = draw(st.booleans())  # logits at the top level, else at level 0 (as products leave them)
    return name, x, fresh, draw(st.booleans()), packed, draw(st.booleans()), draw(st.sampled_from(["test", "fast"]))


@given(case=honest_cases())
@example(case=("default", np.array([[128.0, -128.0, 128.0]]), False, False, False, True, "test"))
@example(case=("narrow", np.array([[4.0, -4.0] * 5] * 3), False, False, False, True, "test"))
@example(case=("narrow", np.array([[4.0, -4.0] * 8] * 40), False, True, True, True, "fast"))
@example(case=("hetal", np.full((40, 16), -128.0), False, True, True, False, "test"))
@example(case=("default", np.array([LARGEST_SUM]), True, False, False, True, "test"))
@example(case=("default", np.array([LARGEST_SUM] * 40), False, False, True, True, "fast"))
def test_honest_runs_stay_within_every_stage_bound(plain_ctx, plain_fast, case):
    name, x, fresh, prescaled, packed, training, preset = case
    ctx = plain_ctx if preset == "test" else plain_fast
    cfg, c = CONFIGS[name], x.shape[1]
    labels = np.arange(x.shape[0]) % c if training else None
    bounds = stage_bounds(cfg, c, input_scale=cfg.normalizer if prescaled else 1.0,
                          output_scale=1 / x.shape[0] if training else 1.0, params=ctx.params)
    recorder = Recorder(ctx, bounds)
    _run(ctx, x, cfg, recorder, level=ctx.params.levels if fresh else 0, prescaled=prescaled, packed=packed,
         labels=labels)
    assert recorder.peaks and "" not in recorder.peaks  # ensure_levels names every stage
    for stage, peak in recorder.peaks.items():
        assert stage in bounds.stages, stage
        assert peak <= bounds.bound(stage), (stage, peak)
        key = (name, c, prescaled, stage)
        MEASURED[key] = (max(peak, MEASURED.get(key, (0.0, 0.0))[0]), bounds.bound(stage))


def test_measured_peaks_report(capsys):
    """Not an assertion: prints how tight the bounds are (run with -s after the test above)."""
    with capsys.disabled():
        for (name, c, prescaled, stage), (peak, bound) in sorted(MEASURED.items()):
            print(f"{name:8s} c={c:<3d} {'prescaled' if prescaled else 'raw':9s} {stage:42s} "
                  f"max {peak:10.4g}  bound {bound:10.4g}  ({peak / bound:.0%})")


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
    assert failed in bounds.logit_stages  # the first refresh, which holds the logits
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
        b.check("DiagABT (x @ w.T)", np.array([np.inf, 1.0]), valid=np.array([False, True]))
    b.check("refresh", np.array([200.0, -255.0]))  # not a softmax stage: CKKS's room at level 0
    with pytest.raises(et.DomainError, match="refresh: a value of magnitude 300"):
        b.check("refresh", np.array([300.0]))
    b.check("softmax row sum", np.array([5.0, 0.1]), valid=np.array([False, True]))
    with pytest.raises(et.DomainError, match="softmax row sum: a value of magnitude 5"):
        b.check("softmax row sum", np.array([5.0, 0.1]))
    b.check("softmax normalize", np.full(3, 128.0 + 1j * 1e-6))  # CKKS's imaginary noise
    assert representable_bound("test") == 256.0 and representable_bound("fast") == 2.0**19
    assert representable_bound() == 256.0


def _inverse_inputs(cfg: SoftmaxConfig, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """e' = e/R and t = 1 − z/R of the reference model (``SoftmaxConfig.reference``'s steps)."""
    c = x.shape[1]
    c_pad = 1 << (c - 1).bit_length()
    u = np.full((x.shape[0], c_pad), -0.5)
    u[:, :c] = x * cfg.normalizer
    y = u
    if cfg.subtract_max:
        m = u
        for i in range(cfg.rounds(c)):
            m = cfg.comparison.max(m, np.roll(m, -(1 << i), axis=1))
        y = u - m[:, :1]
    radius = cfg.inverse(c).radius
    e = cfg.exp(8.0 * cfg.extension(y))[:, :c] / radius
    return e, 1 - e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("c", CLASSES)
def test_inverse_stages_hold_their_bounds_on_the_reference_model(name, c):
    """The stages the plaintext runs above never had to refresh on 'test'/'fast' (the plan refreshes
    the pair (t, P) at the product), checked on the reference model's values, extreme rows included."""
    cfg = CONFIGS[name]
    r = cfg.domain_radius
    rng = np.random.default_rng(c)
    x = np.concatenate([rng.uniform(-r, r, (500, c)), rng.choice([-r, r], (200, c)),
                        r - rng.uniform(0, 6, (300, c)), np.full((1, c), r)])
    if c == len(LARGEST_SUM) and name == "default":
        x = np.concatenate([x, [LARGEST_SUM]])
    b = stage_bounds(cfg, c)
    e, t = _inverse_inputs(cfg, x)
    b.check("softmax inverse (square)", t)
    b.check("softmax inverse (first product)", np.concatenate([1 + t.ravel(), e.ravel()]))
    b.check("softmax row sum", e)
    b.check("softmax inverse (product)", cfg.reference(x))
    with pytest.raises(et.DomainError):
        b.check("softmax inverse (square)", np.array([1.1]))  # |t| ≥ 1: the inverse diverges
