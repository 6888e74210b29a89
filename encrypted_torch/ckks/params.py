"""CKKS parameter presets: ring degree, modulus chain and scale, all at 128-bit security."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CKKSParams:
    """A CKKS parameter set.

    ``coeff_bits`` is SEAL's modulus chain: the base prime, ``levels`` rescaling primes of
    ``scale_bits`` bits each, then the special (key-switching) prime.
    """

    name: str
    poly_modulus_degree: int
    coeff_bits: tuple[int, ...]
    scale_bits: int

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def levels(self) -> int:
        """Rescales a fresh ciphertext can take (its chain index when fresh)."""
        return len(self.coeff_bits) - 2

    @property
    def scale(self) -> float:
        return float(2**self.scale_bits)

    @property
    def headroom_bits(self) -> int:
        """log2 of the largest magnitude a value may reach at the last level, plus one."""
        return self.coeff_bits[0] - self.scale_bits

    @property
    def max_abs_value(self) -> float:
        """Values above this wrap silently at level 0 (bits(q0) - log2(scale) - 1)."""
        return float(2 ** (self.headroom_bits - 1))


PRESETS: dict[str, CKKSParams] = {
    # Small ring for unit tests: 3 levels, 4096 slots, keys of a few MB.
    "test": CKKSParams("test", 8192, (49, 40, 40, 40, 49), 40),
    # HETAL.md §5: N=16384 holds 438 bits at 128-bit security -> 7 levels of 2^40.
    "fast": CKKSParams("fast", 16384, (60,) + (40,) * 7 + (60,), 40),
    # N=32768 holds 881 bits -> 19 levels of 2^40.
    "deep": CKKSParams("deep", 32768, (60,) + (40,) * 19 + (60,), 40),
}


def get_params(preset: str | CKKSParams) -> CKKSParams:
    """Return a preset by name (``"test"``, ``"fast"``, ``"deep"``) or pass a CKKSParams through."""
    if isinstance(preset, CKKSParams):
        return preset
    try:
        return PRESETS[preset]
    except KeyError:
        raise ValueError(f"unknown CKKS preset {preset!r}; choose one of {sorted(PRESETS)}") from None
