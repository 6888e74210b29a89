"""The rotation steps each product needs for a unit shape (HETAL.md §3.6), so that a context can be
created with exactly those Galois keys (one key is 18 MB at N=16384, 211 MB at N=32768).

>>> steps = hetal_rotation_steps((1024, 8), 8)
>>> ctx = SecretContext.create("fast", rotations=steps)     # doctest: +SKIP
"""

from __future__ import annotations


def _log2(n: int) -> int:
    return n.bit_length() - 1


def _unique(steps: list[int], slots: int) -> list[int]:
    seen: dict[int, int] = {}
    for s in steps:
        if s % slots and s % slots not in seen:
            seen[s % slots] = s
    return sorted(seen.values())


def diag_abt_steps(unit: tuple[int, int], c_pad: int, imag: str = "const") -> list[int]:
    """Row shifts k·s1 (k = 1…h, or 1…c_pad−1 unpacked) and the column fold/spread ±2^l (l < log s1).

    ``imag``: "const" (packed, option a), "real" (option c) or "plain" (B plaintext: no shifts).
    """
    s0, s1 = unit
    if imag == "plain":
        shifts: list[int] = []
    elif imag == "const" and c_pad > 1:
        shifts = [k * s1 for k in range(1, c_pad // 2 + 1)]
    else:
        shifts = [k * s1 for k in range(1, c_pad)]
    folds = [1 << e for e in range(_log2(s1))]
    return _unique(shifts + folds + [-f for f in folds], s0 * s1)


def diag_atb_steps(unit: tuple[int, int], c_pad: int, variant: str | None = None) -> list[int]:
    """Packing h, h−s1; RotLeft k, k−s1 (variant "mask_a") or Rot k and PRotUp's s1 ("prot_up"),
    k = 1…h−1; the row fold 2^l·s1 (l < log s0). ``variant=None``: both variants' steps."""
    s0, s1 = unit
    h = c_pad // 2
    steps = [h, h - s1] if h else []
    ks = range(1, h)
    if variant in (None, "mask_a"):
        steps += [k for k in ks] + [k - s1 for k in ks]
    if variant in (None, "prot_up", "plain"):
        steps += list(ks) + ([s1] if h >= 2 and variant != "plain" else [])
    steps += [(1 << e) * s1 for e in range(_log2(s0))]
    return _unique(steps, s0 * s1)


def softmax_steps(unit: tuple[int, int], c_pad: int) -> list[int]:
    """Row-local class rotations ±2^l (l < log c_pad: tournament, row sum, spreads), the tile repair
    −c_pad (HETAL.md §3.6, §4), and ±c_pad·2^l (l < log s1/c_pad) to unpack block rows that shared a
    ciphertext (functional/packing.py)."""
    s0, s1 = unit
    classes = [1 << e for e in range(_log2(c_pad))]
    tiles = [c_pad << e for e in range(_log2(s1 // c_pad))]
    return _unique([s for k in classes for s in (k, -k)] + [-c_pad] + tiles + [-t for t in tiles], s0 * s1)


def hetal_rotation_steps(unit: tuple[int, int], c_pad: int, *, imag: str = "const",
                         softmax: bool = True) -> list[int]:
    """Every step one HETAL training step uses: DiagABT, DiagATB (both variants) and the softmax.

    ``imag="auto"`` adds the real-only option's row shifts k·s1 (h < k < c_pad): up to 7 more keys
    (126 MB at N=16384). Without them a real-only DiagABT composes those shifts from two keys.
    For the training shapes of HETAL.md §2 this is 19-34 keys ("const") or 22-41 ("auto").
    """
    options = ("const", "real") if imag == "auto" else (imag,)
    steps = [s for o in options for s in diag_abt_steps(unit, c_pad, o)]
    steps += diag_atb_steps(unit, c_pad)
    if softmax:
        steps += softmax_steps(unit, c_pad)
    return _unique(steps, unit[0] * unit[1])
