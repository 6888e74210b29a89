"""The Evaluator on both backends against numpy: values, levels, scales, alignment and op counts.

On SEAL every result's tracked level, scale and size must equal SEAL's own (chain index,
``ct.scale``, ``ct.size()``), exactly; values must match numpy within ``ckks_tolerance``. On the
plaintext backend values match to float64 rounding.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import encrypted_torch as et
from encrypted_torch.ckks import Cipher, count_ops
from encrypted_torch.ckks.galois import (
    compose_rotation,
    conjugation_element,
    galois_element,
    power_of_two_steps,
)
from encrypted_torch.ckks.noise import ckks_tolerance

PARAMS = et.PRESETS["test"]
SLOTS = PARAMS.slots
DELTA = PARAMS.scale

seeds = st.integers(0, 2**32 - 1)
bounds = st.sampled_from([1e-3, 1.0, 8.0])


def rand(seed: int, bound: float = 1.0, complex_: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.uniform(-bound, bound, SLOTS)
    return x + 1j * rng.uniform(-bound, bound, SLOTS) if complex_ else x


def check_books(ctx: et.SecretContext, c: Cipher) -> None:
    """The evaluator's level, scale and size are SEAL's own, exactly."""
    backend = ctx.public().backend
    if backend.name == "seal":
        assert backend.level_of(c.handle) == c.level
        assert backend.scale_of(c.handle) == c.scale
        assert backend.size_of(c.handle) == c.size


def check(ctx: et.SecretContext, c: Cipher, expected: np.ndarray, *, magnitude: float = 1.0,
          keyswitches: int = 0, depth: int = 0) -> None:
    check_books(ctx, c)
    got = ctx.decrypt_vector(c)
    if not np.iscomplexobj(expected):
        got = got.real
    if ctx.backend_name == "plain":
        tol = 1e-12 * max(magnitude, 1.0)
    else:
        tol = ckks_tolerance(ctx.params, magnitude=magnitude, keyswitches=keyswitches, depth=depth)
    err = float(np.max(np.abs(got - expected)))
    assert err <= tol, f"max error {err:.3g} > tolerance {tol:.3g}"


# --- addition -----------------------------------------------------------------------------------
@given(seed=seeds, bound=bounds)
@example(seed=0, bound=0.0)
def test_add_sub_negate(any_ctx, seed, bound):
    ev = any_ctx.public().evaluator
    x, y = rand(seed, bound), rand(seed + 1, bound)
    a, b = ev.encrypt(x), ev.encrypt(y)
    with count_ops() as ops:
        s, d, n = ev.add(a, b), ev.sub(a, b), ev.negate(a)
    assert ops.additions == 2 and ops.scale_alignments == 0 and ops.mod_switches == 0
    for c, want in ((s, x + y), (d, x - y), (n, -x)):
        assert c.level == PARAMS.levels and c.scale == DELTA
        check(any_ctx, c, want, magnitude=2 * bound)


@given(seed=seeds, bound=bounds, scalar=st.floats(-10, 10))
@example(seed=0, bound=1.0, scalar=0.0)
def test_add_plain(any_ctx, seed, bound, scalar):
    ev = any_ctx.public().evaluator
    x, y = rand(seed, bound), rand(seed + 1, bound)
    a = ev.mul_plain(ev.encrypt(x), 1.0, out_scale=2.0**42)  # a lower level and another scale
    with count_ops() as ops:
        v, s = ev.add_plain(a, y), ev.add_plain(a, scalar)
    assert ops.additions == (2 if scalar else 1)  # adding zero is free and returns the operand
    assert s is a if scalar == 0 else s.level == a.level
    assert (v.level, v.scale) == (a.level, a.scale)
    check(any_ctx, v, x + y, magnitude=2 * bound, depth=1)
    check(any_ctx, s, x + scalar, magnitude=bound + abs(scalar), depth=1)


def test_add_plain_complex(any_ctx):
    ev = any_ctx.public().evaluator
    x = rand(3)
    check(any_ctx, ev.add_plain(ev.encrypt(x), 2j), x + 2j)


# --- multiplication ------------------------------------------------------------------------------
@given(seed=seeds, bound=bounds, log_out=st.floats(30, 45))
@example(seed=1, bound=1.0, log_out=40.0)
def test_mul_plain_lands_on_out_scale(any_ctx, seed, bound, log_out):
    ev = any_ctx.public().evaluator
    x, m = rand(seed, bound), rand(seed + 1)
    out_scale = 2.0**log_out
    a = ev.encrypt(x)
    with count_ops() as ops:
        v = ev.mul_plain(a, m, out_scale=out_scale)
        s = ev.mul_plain(v, -1.5)  # back to Δ, from a scale that is not Δ
    assert ops.ct_pt_mults == 2 and ops.rescales == 2 and ops.encryptions == 0
    assert (v.level, v.scale) == (a.level - 1, out_scale)
    assert (s.level, s.scale) == (a.level - 2, DELTA)
    # A rescale to a smaller scale leaves a proportionally larger rounding error in the values.
    loss = max(1.0, DELTA / out_scale)
    check(any_ctx, v, x * m, magnitude=max(bound, 1) * loss, depth=1)
    check(any_ctx, s, -1.5 * x * m, magnitude=1.5 * max(bound, 1) * loss, depth=2)


def test_mul_plain_complex_and_zero(any_ctx):
    ev = any_ctx.public().evaluator
    x = rand(5, complex_=True)
    a = ev.encrypt(x)
    check(any_ctx, ev.mul_plain(a, 1j), 1j * x, magnitude=2, depth=1)
    with count_ops() as ops:
        z = ev.mul_plain(a, np.zeros(SLOTS))  # SEAL forbids the transparent product
    assert ops.encryptions == 1 and ops.ct_pt_mults == 0
    assert (z.level, z.scale) == (a.level - 1, DELTA)
    check(any_ctx, z, np.zeros(SLOTS, complex))


@pytest.mark.parametrize("values", [1e-13, "one tiny slot"])
def test_mul_plain_by_values_below_the_scale(any_ctx, values):
    """Values that encode to the zero polynomial give an encryption of ~0, not a SEAL error."""
    ev = any_ctx.public().evaluator
    vec = np.r_[1e-9, np.zeros(SLOTS - 1)] if values == "one tiny slot" else values
    x = rand(6)
    a = ev.encrypt(x)
    with count_ops() as ops:
        z = ev.mul_plain(a, vec)
    assert ops.ct_pt_mults == 1 and ops.rescales == 1
    assert (z.level, z.scale) == (a.level - 1, DELTA)
    check(any_ctx, z, x * vec, depth=1)


@given(seed=seeds, bound=st.sampled_from([0.5, 1.0, 4.0]))
@example(seed=2, bound=0.0)
def test_mul_and_square(any_ctx, seed, bound):
    pub = any_ctx.public()
    ev = pub.evaluator
    x, y = rand(seed, bound), rand(seed + 1, bound)
    a, b = ev.encrypt(x), ev.encrypt(y)
    q = pub.backend.primes[a.level]
    with count_ops() as ops:
        p, sq = ev.mul(a, b), ev.square(a)
    assert _counts(ops) == {"ct_ct_mults": 2, "relinearizations": 2, "rescales": 2}
    assert p.level == a.level - 1 and p.scale == DELTA * DELTA / q and p.scale != DELTA
    assert p.size == 2 and sq.scale == p.scale
    check(any_ctx, p, x * y, magnitude=bound * bound, keyswitches=1, depth=1)
    check(any_ctx, sq, x * x, magnitude=bound * bound, keyswitches=1, depth=1)


def test_mul_raw_sums_then_finishes_once(any_ctx):
    ev = any_ctx.public().evaluator
    xs = [rand(s) for s in range(4)]
    a, b, c, d = (ev.encrypt(x) for x in xs)
    with count_ops() as ops:
        ab, cd = ev.mul_raw(a, b), ev.mul_raw(c, d)
        assert ab.size == 3 and ab.level == a.level and ab.scale == DELTA * DELTA
        check_books(any_ctx, ab)
        z = ev.add(ab, cd)
        assert z.size == 3
        check_books(any_ctx, z)
        out = ev.finish(z)
    assert (ops.ct_ct_mults, ops.relinearizations, ops.rescales, ops.additions) == (2, 1, 1, 1)
    assert out.size == 2 and out.level == a.level - 1
    check(any_ctx, out, xs[0] * xs[1] + xs[2] * xs[3], magnitude=2, keyswitches=1, depth=1)


def test_mul_of_different_levels_switches_the_higher_down(any_ctx):
    ev = any_ctx.public().evaluator
    x, y = rand(7), rand(8)
    a = ev.encrypt(x)
    b = ev.mul_plain(ev.encrypt(y), 1.0)
    with count_ops() as ops:
        p = ev.mul(a, b)
    assert ops.mod_switches == 1 and ops.scale_alignments == 0
    assert p.level == b.level - 1
    check(any_ctx, p, x * y, keyswitches=1, depth=2)


def test_ops_on_size_three_relinearize_first(any_ctx):
    ev = any_ctx.public().evaluator
    x, y = rand(9), rand(10)
    raw = ev.mul_raw(ev.encrypt(x), ev.encrypt(y))
    with count_ops() as ops:
        r = ev.rotate(raw, 1)
        c = ev.conjugate(raw)
    assert ops.relinearizations == 2 and r.size == 2 and c.size == 2
    assert (r.level, r.scale) == (raw.level, raw.scale)
    check(any_ctx, ev.rescale(r), np.roll(x * y, -1), keyswitches=2, depth=1)
    check(any_ctx, ev.rescale(c), x * y, keyswitches=2, depth=1)
    # A plaintext factor of a product at scale Δ² would be encoded at scale ~1: refused, not rounded.
    with pytest.raises(et.DomainError, match="finish"):
        ev.mul_plain(raw, 0.5)
    check(any_ctx, ev.mul_plain(ev.finish(raw), 0.5), 0.5 * x * y, keyswitches=1, depth=2)


# --- rotations and conjugation -------------------------------------------------------------------
@given(step=st.integers(-2 * SLOTS, 2 * SLOTS), seed=seeds)
@example(step=0, seed=0)
@example(step=1, seed=0)
@example(step=-1, seed=0)
@example(step=SLOTS // 2, seed=0)
@example(step=-(SLOTS // 2), seed=0)
@example(step=SLOTS - 1, seed=0)
@example(step=SLOTS, seed=0)
@example(step=1000, seed=0)
@example(step=3 * SLOTS // 4 + 1, seed=0)
def test_rotate_is_np_roll(any_ctx, step, seed):
    ev = any_ctx.public().evaluator
    x = rand(seed)
    a = ev.encrypt(x)
    hops = compose_rotation(step, any_ctx.public().rotation_steps, SLOTS)
    with count_ops() as ops:
        r = ev.rotate(a, step)
    assert ops.rotations == len(hops) <= 7  # NAF weight of a step over all ±2^i keys
    assert (r.level, r.scale) == (a.level, a.scale)
    if step % SLOTS == 0:
        assert r is a
    check(any_ctx, r, np.roll(x, -step), keyswitches=len(hops))


def test_rotate_at_the_last_level(any_ctx):
    ev = any_ctx.public().evaluator
    x = rand(11)
    low = ev.mod_switch(ev.encrypt(x), 0)
    r = ev.rotate(low, -3)
    assert r.level == 0
    check(any_ctx, r, np.roll(x, 3), keyswitches=2)


@pytest.fixture(scope="module", params=["plain", "seal"])
def one_key_ctx(request) -> et.SecretContext:
    """Galois keys for the step 1 only (plus conjugation)."""
    return et.SecretContext.create("test", rotations=[1], backend=request.param)


@pytest.mark.parametrize("step", [1, 2, 3, 4, SLOTS + 2])
def test_rotation_composed_from_the_keys_present(one_key_ctx, step):
    ev = one_key_ctx.public().evaluator
    assert one_key_ctx.public().rotation_steps == {1}
    x = rand(step)
    with count_ops() as ops:
        r = ev.rotate(ev.encrypt(x), step)
    assert ops.rotations == step % SLOTS  # one key switch per hop of 1
    check(one_key_ctx, r, np.roll(x, -step), keyswitches=ops.rotations)


@pytest.mark.parametrize("step", [5, -1, SLOTS // 2])
def test_missing_rotation_key(one_key_ctx, step):
    ev = one_key_ctx.public().evaluator
    a = ev.encrypt(rand(0))
    with count_ops() as ops, pytest.raises(et.MissingRotationKeyError, match=f"rotation by {step}"):
        ev.rotate(a, step)
    assert ops.rotations == 0
    assert issubclass(et.MissingRotationKeyError, et.KeyRoleError)


def test_compose_rotation_paths():
    keys = power_of_two_steps(SLOTS)
    assert compose_rotation(0, keys, SLOTS) == []
    assert compose_rotation(SLOTS, keys, SLOTS) == []
    assert compose_rotation(4, keys, SLOTS) == [4]
    assert compose_rotation(-4, keys, SLOTS) == [SLOTS - 4]
    assert sorted(compose_rotation(3, keys, SLOTS)) == [4, SLOTS - 1]  # 4 - 1: NAF, two hops
    assert len(compose_rotation(1000, keys, SLOTS)) == 3  # HETAL.md §6.3: 1000 takes 3 hops
    for step in range(-70, 70):
        path = compose_rotation(step, keys, SLOTS)
        assert sum(path) % SLOTS == step % SLOTS
        assert len(path) <= 4
    assert compose_rotation(7, [3, 4], SLOTS) == [3, 4]  # searched when no NAF path exists
    assert compose_rotation(12, [3], SLOTS) == [3, 3, 3, 3]
    for unreachable in (13, 10, -3):  # more than 4 hops of 3
        with pytest.raises(et.MissingRotationKeyError):
            compose_rotation(unreachable, [3], SLOTS)


def test_galois_elements_are_seals(seal_ctx):
    """The context holds SEAL keys exactly at our computed elements (HETAL.md §6.3)."""
    backend = seal_ctx.public().backend
    n2 = 2 * PARAMS.poly_modulus_degree
    for step in backend.rotation_steps:
        assert backend.galois_keys.has_key(galois_element(step, SLOTS))
        assert galois_element(step, SLOTS) == pow(3, step % SLOTS, n2)
    assert backend.galois_keys.has_key(conjugation_element(SLOTS))
    assert conjugation_element(SLOTS) == n2 - 1
    assert len(backend.rotation_steps) == 2 * 12 - 1  # ±2^i for i < 12; ±2048 coincide
    assert not backend.galois_keys.has_key(galois_element(3, SLOTS))


@given(seed=seeds)
@example(seed=0)
def test_conjugate(any_ctx, seed):
    ev = any_ctx.public().evaluator
    z = rand(seed, complex_=True)
    a = ev.encrypt(z)
    with count_ops() as ops:
        c = ev.conjugate(a)
        re2 = ev.real_part_times_two(a)
    assert ops.conjugations == 2 and ops.rotations == 0
    assert (c.level, c.scale) == (a.level, a.scale)
    check(any_ctx, c, np.conj(z), magnitude=2, keyswitches=1)
    check(any_ctx, re2, (2 * z.real).astype(complex), magnitude=2, keyswitches=1)


# --- levels and scales ---------------------------------------------------------------------------
@given(seed=seeds, level=st.integers(0, PARAMS.levels))
@example(seed=0, level=0)
def test_mod_switch(any_ctx, seed, level):
    ev = any_ctx.public().evaluator
    x = rand(seed)
    a = ev.encrypt(x)
    with count_ops() as ops:
        m = ev.mod_switch(a, level)
    assert ops.mod_switches == (level != a.level) and ops.rescales == 0
    assert (m.level, m.scale) == (level, a.scale)
    if level == a.level:
        assert m is a
    check(any_ctx, m, x)
    with pytest.raises(et.DepthError, match="climb"):
        ev.mod_switch(m, level + 1)


def test_encrypt_at_a_level_and_scale(any_ctx):
    ev = any_ctx.public().evaluator
    x = rand(12)
    a = ev.encrypt(x, level=1, scale=2.0**33)
    assert (a.level, a.scale) == (1, 2.0**33)
    check(any_ctx, a, x, magnitude=2**7)  # 7 bits less scale: 2^7 times the fresh error
    check(any_ctx, ev.encrypt(2.5), np.full(SLOTS, 2.5))


def test_books_match_seal_along_a_chain(seal_ctx):
    """Every intermediate of a mixed program carries SEAL's own level, scale and size."""
    ev = seal_ctx.public().evaluator
    x, y = rand(13), rand(14)
    a, b = ev.encrypt(x), ev.encrypt(y)
    steps = [ev.mul(a, b)]
    steps.append(ev.add(steps[-1], a))               # fresh a goes down with a scale fix
    steps.append(ev.rotate(steps[-1], 5))
    steps.append(ev.mul_plain(steps[-1], y, out_scale=2.0**38))
    steps.append(ev.add(steps[-1], ev.square(b)))    # b² goes down with a scale fix
    steps.append(ev.add(steps[-1], ev.mul_plain(steps[2], 1.0)))  # same level, other scales
    steps.append(ev.conjugate(steps[-1]))
    steps.append(ev.mod_switch(steps[0], 0))
    for c in steps:
        check_books(seal_ctx, c)
    assert [c.level for c in steps] == [2, 2, 2, 1, 1, 0, 0, 0]


def test_depth_errors_name_the_op_and_the_numbers(any_ctx):
    ev = any_ctx.public().evaluator
    low = ev.mod_switch(ev.encrypt(rand(15)), 0)
    for call, op in ((lambda: ev.mul(low, low), "multiply"),
                     (lambda: ev.mul_plain(low, 2.0), "multiply by plaintext"),
                     (lambda: ev.rescale(low), "rescale")):
        with pytest.raises(et.DepthError, match=f"{op} needs 1 level\\(s\\), 0 left") as err:
            call()
        assert (err.value.needed, err.value.left) == (1, 0)


# --- alignment rules -----------------------------------------------------------------------------
def _counts(ops: et.OpCounts) -> dict[str, int]:
    return {k: v for k, v in ops.as_dict().items() if v}


@pytest.mark.parametrize("case", ["same", "levels", "levels+scale", "scale", "double rounding"])
def test_alignment_rules_and_counts(any_ctx, case):
    """HETAL.md §6.7 / docs/internals.md: the higher operand goes down; a scale fix rides on a
    level it has to lose anyway; same level with different scales costs both a level."""
    ev = any_ctx.public().evaluator
    x, y = rand(16), rand(17)
    a = ev.encrypt(x)
    if case == "same":
        b = ev.encrypt(y)
    elif case == "levels":
        b = ev.encrypt(y, level=1)
    elif case == "levels+scale":
        b = ev.mul_plain(ev.encrypt(y), 1.0, out_scale=2.0**38)
    elif case == "scale":
        b = ev.encrypt(y, scale=2.0**38)
    else:
        b = ev.encrypt(y, scale=DELTA * (1 + 1e-14))
    b_scale = b.scale
    with count_ops() as ops:
        s = ev.add(a, b)
    expected = {
        "same": ({"additions": 1}, PARAMS.levels, DELTA),
        "levels": ({"additions": 1, "mod_switches": 1}, 1, DELTA),
        "levels+scale": ({"additions": 1, "scale_alignments": 1, "ct_pt_mults": 1, "rescales": 1},
                         PARAMS.levels - 1, 2.0**38),
        "scale": ({"additions": 1, "scale_alignments": 1, "ct_pt_mults": 1, "rescales": 1,
                   "mod_switches": 1}, PARAMS.levels - 1, DELTA),
        "double rounding": ({"additions": 1}, PARAMS.levels, DELTA),
    }[case]
    assert (_counts(ops), s.level, s.scale) == expected
    check(any_ctx, s, x + y, magnitude=2, depth=1)
    # The operands are untouched: their handles still carry the tracked scales.
    assert b.scale == b_scale
    check_books(any_ctx, a)
    check_books(any_ctx, b)


def test_alignment_to_a_lower_level_with_a_nearly_equal_scale(any_ctx):
    """A mod-switched operand whose scale differs by double rounding only still adds."""
    ev = any_ctx.public().evaluator
    x, y = rand(18), rand(19)
    a = ev.encrypt(x, scale=DELTA * (1 + 1e-14))
    b = ev.encrypt(y, level=2)
    s = ev.add(a, b)
    assert (s.level, s.scale) == (2, a.scale)
    check(any_ctx, s, x + y, magnitude=2)
    check_books(any_ctx, a)


def test_to_level_scale(any_ctx):
    ev = any_ctx.public().evaluator
    x = rand(20)
    a = ev.encrypt(x)
    assert ev.to_level_scale(a, a.level, a.scale) is a
    with count_ops() as ops:
        b = ev.to_level_scale(a, 1, 2.0**37)
    assert (b.level, b.scale) == (1, 2.0**37)
    assert ops.scale_alignments == 1 and ops.ct_pt_mults == 1 and ops.mod_switches == 1
    check(any_ctx, b, x, depth=1)
    with pytest.raises(et.DepthError, match="scale"):
        ev.to_level_scale(b, 1, DELTA)


# --- the same program, the same counts on both backends -----------------------------------------
def _program(ctx: et.SecretContext) -> tuple[et.OpCounts, np.ndarray]:
    ev = ctx.public().evaluator
    x, y = rand(21), rand(22)
    with count_ops() as ops:
        a, b = ev.encrypt(x), ev.encrypt(y)
        p = ev.mul(a, b)
        s = ev.add(p, ev.rotate(a, 1000))
        t = ev.mul_plain(s, y, out_scale=DELTA)
        u = ev.sub(ev.conjugate(t), ev.square(b))
        z = ev.finish(ev.add(ev.mul_raw(u, u), ev.mul_raw(u, ev.rotate(u, -3))))
        z = ev.add_plain(ev.mod_switch(z, 0), 0.5)
    assert z.level == 0
    return ops, ctx.decrypt_vector(z).real


def test_op_counts_identical_on_both_backends(plain_ctx, seal_ctx):
    plain_ops, plain_out = _program(plain_ctx)
    seal_ops, seal_out = _program(seal_ctx)
    assert plain_ops == seal_ops
    assert plain_ops.rotations == 3 + 2 and plain_ops.scale_alignments == 2
    assert np.max(np.abs(plain_out - seal_out)) < ckks_tolerance(PARAMS, magnitude=18, keyswitches=10,
                                                                  depth=3)


def test_count_ops_nests():
    with count_ops() as outer:
        with count_ops() as inner:
            et.ckks.counters.record("rotations", 2)
        et.ckks.counters.record("rotations")
    assert (inner.rotations, outer.rotations) == (2, 3)
    assert (outer - inner).rotations == 1 and (outer + inner).rotations == 5


# --- misc contracts ------------------------------------------------------------------------------
def test_cipher_has_no_truth_value_and_repr_hides_values(any_ctx):
    c = any_ctx.public().evaluator.encrypt(np.full(SLOTS, 123.456))
    with pytest.raises(TypeError):
        bool(c)
    assert "123" not in repr(c) and "level=3" in repr(c)


def test_ciphers_of_another_context_are_refused(plain_ctx):
    other = et.SecretContext.create("test", backend="plain")
    ev, ev2 = plain_ctx.public().evaluator, other.public().evaluator
    a, b = ev.encrypt(rand(23)), ev2.encrypt(rand(24))
    for call in (lambda: ev.add(a, b), lambda: ev.mul(a, b), lambda: ev2.rotate(a, 1),
                 lambda: ev2.mod_switch(a, 0)):
        with pytest.raises(et.ContextMismatchError):
            call()
    with pytest.raises(TypeError):
        ev.add(a, rand(0))


def test_wrong_slot_vector_length(any_ctx):
    ev = any_ctx.public().evaluator
    with pytest.raises(ValueError, match="slot vector"):
        ev.encrypt(np.ones(SLOTS - 1))


def test_plain_backend_raises_where_ckks_would_wrap(plain_ctx):
    """At level 0 the test preset holds |x| < 2^(49-40-1) = 256 (HETAL.md §6.7)."""
    ev = plain_ctx.public().evaluator
    ev.encrypt(np.full(SLOTS, 255.0), level=0)
    with pytest.raises(et.DomainError, match="level 0"):
        ev.encrypt(np.full(SLOTS, 300.0), level=0)
    a = ev.encrypt(np.full(SLOTS, 20.0), level=1)
    with pytest.raises(et.DomainError):
        ev.mul(a, a)  # 400 at level 0
