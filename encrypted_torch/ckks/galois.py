"""Rotation steps and Galois elements: which keys a rotation needs, and how to compose it."""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import MissingRotationKeyError


def normalize_step(step: int, slots: int) -> int:
    """Left-rotation step reduced to [0, slots)."""
    return step % slots


def galois_element(step: int, slots: int) -> int:
    """SEAL's Galois element of a left rotation by ``step`` (HETAL.md §6.3)."""
    return pow(3, normalize_step(step, slots), 4 * slots)


def conjugation_element(slots: int) -> int:
    return 4 * slots - 1


def power_of_two_steps(slots: int) -> list[int]:
    """The ±2^i steps TenSEAL generates by default (left and right rotations)."""
    steps = []
    i = 1
    while i < slots:
        steps += [i, -i]
        i *= 2
    return steps


def signed_step(step: int, slots: int) -> int:
    """The representative of ``step`` in (-slots/2, slots/2], as SEAL wants it (|k| < slots)."""
    k = normalize_step(step, slots)
    return k - slots if k > slots // 2 else k


def compose_rotation(step: int, available: Iterable[int], slots: int) -> list[int]:
    """Steps with keys whose sum is ``step`` (mod slots): one if a key exists, else a short chain.

    Uses the signed binary expansion over the keys present, then a breadth-first search of up to
    four hops; raises MissingRotationKeyError naming the step otherwise.
    """
    target = normalize_step(step, slots)
    have = {normalize_step(s, slots) for s in available} - {0}
    if target == 0:
        return []
    if target in have:
        return [target]
    naf = _signed_binary(signed_step(target, slots))
    if all(normalize_step(s, slots) in have for s in naf):
        return [normalize_step(s, slots) for s in naf]
    frontier: dict[int, list[int]] = {0: []}
    for _ in range(4):
        nxt: dict[int, list[int]] = {}
        for pos, path in frontier.items():
            for s in sorted(have):
                q = (pos + s) % slots
                if q == target:
                    return path + [s]
                if q not in frontier and q not in nxt:
                    nxt[q] = path + [s]
        frontier = nxt
    raise MissingRotationKeyError(
        f"rotation by {step} has no Galois key and cannot be composed from the {len(have)} keys "
        "in this context; create the context with rotations=[..., "
        f"{signed_step(target, slots)}] (or the layout's rotation_steps())"
    )


def _signed_binary(k: int) -> list[int]:
    """Non-adjacent form of k as a list of ±2^i."""
    out, bit, sign = [], 1, 1 if k >= 0 else -1
    k = abs(k)
    while k:
        if k & 1:
            digit = 2 - (k & 3)  # +1 or -1
            out.append(sign * digit * bit)
            k -= digit
        k >>= 1
        bit <<= 1
    return out
