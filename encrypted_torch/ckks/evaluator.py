"""Level- and scale-tracked homomorphic arithmetic over either backend.

Every ``Cipher`` carries its level (SEAL's chain index) and its exact scale. Scales are
computed as SEAL computes them, masks and constants are encoded at the scale that makes a
product land exactly on the wanted scale (HETAL.md §6.7), and operands are aligned
automatically: the higher one is brought down; a scale fix rides on a level it had to lose.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ContextMismatchError, DepthError, DomainError
from . import counters
from .backend import Backend
from .galois import compose_rotation

_SAME_SCALE = 1e-12  # relative; differences this small are double rounding, not real drift
_MIN_PLAIN_SCALE = 2.0**20  # a plaintext encoded below this keeps less than ~6 decimal digits


@dataclass
class Cipher:
    """One ciphertext (or plaintext-backend slot vector) with its level and scale."""

    handle: Any
    level: int
    scale: float
    context_id: str
    size: int = 2  # 3 after a multiplication that was not relinearized yet
    # A fresh secret-key encryption's seeded bytes (half the size): what serialization sends for it.
    wire: bytes | None = field(default=None, repr=False, compare=False)

    def __repr__(self) -> str:
        return f"Cipher(level={self.level}, scale=2^{np.log2(self.scale):.3f}, size={self.size})"

    def __bool__(self) -> bool:
        raise TypeError("a ciphertext has no truth value; decrypt it with the key owner's context")


class Evaluator:
    """Homomorphic ops with level/scale bookkeeping; the only caller of a backend's raw ops."""

    def __init__(self, backend: Backend, context_id: str) -> None:
        self.backend = backend
        self.context_id = context_id
        self.params = backend.params
        self.slots: int = backend.slots
        self.primes: list[int] = backend.primes
        self.top_level: int = self.params.levels

    def _wrap(self, handle: Any, level: int, scale: float, op: str, size: int = 2) -> Cipher:
        self.backend.check_range(handle, level, scale, op)
        return Cipher(handle, level, scale, self.context_id, size)

    def _own(self, *cs: Cipher) -> None:
        for c in cs:
            if not isinstance(c, Cipher):
                raise TypeError(f"expected a Cipher, got {type(c).__name__}")
            if c.context_id != self.context_id:
                raise ContextMismatchError(
                    "ciphertext was encrypted under another key/context "
                    f"({c.context_id[:8]} vs {self.context_id[:8]})"
                )

    def _vector(self, values: Any) -> np.ndarray | complex:
        if np.isscalar(values):
            return complex(values) if np.iscomplexobj(values) else float(values)
        arr = np.asarray(values)
        if arr.shape != (self.slots,):
            raise ValueError(f"slot vector of shape {arr.shape}, expected ({self.slots},)")
        return arr

    def _snap(self, handle: Any, scale: float, wanted: float) -> float:
        """Treat a scale that differs from ``wanted`` by double rounding only as ``wanted``."""
        if scale != wanted and abs(scale / wanted - 1) < _SAME_SCALE:
            self.backend.set_scale(handle, wanted)
            return wanted
        return scale

    def _require(self, c: Cipher, levels: int, op: str) -> None:
        if c.level < levels:
            raise DepthError(op, levels, c.level)

    def encrypt(self, values: Any, level: int | None = None, scale: float | None = None) -> Cipher:
        """Encrypt a slot vector with the public key, at the top level by default."""
        level = self.top_level if level is None else level
        scale = self.params.scale if scale is None else scale
        vec = self._vector(values)
        if np.isscalar(vec):
            vec = np.full(self.slots, vec)
        counters.record("encryptions", level=level)
        return self._wrap(self.backend.encrypt(vec, level, scale), level, scale, "encrypt")

    def adopt_fresh(self, handle: Any, level: int, scale: float) -> Cipher:
        """Wrap a fresh encryption made elsewhere (the key owner's secret-key encryptor)."""
        counters.record("encryptions", level=level)
        return self._wrap(handle, level, scale, "encrypt")

    def zeros_like(self, c: Cipher) -> Cipher:
        """A fresh encryption of zeros at ``c``'s level and scale (SEAL forbids transparent results)."""
        return self.encrypt(np.zeros(self.slots), c.level, c.scale)

    def mod_switch(self, c: Cipher, level: int) -> Cipher:
        """Drop primes down to ``level`` without touching the scale (no noise, no rescale)."""
        self._own(c)
        if level > c.level:
            raise DepthError("mod_switch", level, c.level, "a ciphertext cannot climb the chain")
        if level == c.level:
            return c
        counters.record("mod_switches", level=c.level)
        return Cipher(self.backend.mod_switch(c.handle, level), level, c.scale, self.context_id, c.size)

    def to_level_scale(self, c: Cipher, level: int, scale: float) -> Cipher:
        """Bring ``c`` to exactly (level, scale); a scale change costs the level it lands below."""
        if c.level == level and self._close(c.scale, scale):
            return c
        if self._close(c.scale, scale):
            return self.mod_switch(c, level)
        if c.level <= level:
            raise DepthError("scale alignment", level + 1, c.level,
                             "the operand has no level to spare for a scale fix")
        counters.record("scale_alignments", level=c.level)
        fixed = self.mul_plain(c, 1.0, out_scale=scale)
        return self.mod_switch(fixed, level)

    def align(self, a: Cipher, b: Cipher) -> tuple[Cipher, Cipher]:
        """Same level and scale for both operands of an addition, at the least cost."""
        self._own(a, b)
        if a.level > b.level:
            a = self.to_level_scale(a, b.level, b.scale)
        elif b.level > a.level:
            b = self.to_level_scale(b, a.level, a.scale)
        elif not self._close(a.scale, b.scale):
            # Same level, different scales: both lose one level.
            self._require(a, 1, "add (scale alignment)")
            counters.record("scale_alignments", level=a.level)
            b = self.mul_plain(b, 1.0, out_scale=a.scale)
            a = self.mod_switch(a, b.level)
        if a.scale != b.scale:
            # Equal up to double rounding, but SEAL wants identical scales: set a's on a copy of b
            # (never on the caller's handle, whose tracked scale would then disagree with SEAL's).
            handle = self.backend.mod_switch(b.handle, b.level)
            self.backend.set_scale(handle, a.scale)
            b = Cipher(handle, b.level, a.scale, b.context_id, b.size)
        return a, b

    @staticmethod
    def _close(x: float, y: float) -> bool:
        return abs(x / y - 1) < _SAME_SCALE

    def add(self, a: Cipher, b: Cipher) -> Cipher:
        a, b = self.align(a, b)
        counters.record("additions", level=a.level)
        return self._wrap(self.backend.add(a.handle, b.handle), a.level, a.scale, "add", max(a.size, b.size))

    def sub(self, a: Cipher, b: Cipher) -> Cipher:
        a, b = self.align(a, b)
        counters.record("additions", level=a.level)
        return self._wrap(self.backend.sub(a.handle, b.handle), a.level, a.scale, "sub", max(a.size, b.size))

    def negate(self, a: Cipher) -> Cipher:
        self._own(a)
        return self._wrap(self.backend.negate(a.handle), a.level, a.scale, "negate", a.size)

    def add_plain(self, a: Cipher, values: Any) -> Cipher:
        """Add a plaintext vector or scalar (encoded at ``a``'s level and scale: free)."""
        self._own(a)
        vec = self._vector(values)
        if np.isscalar(vec):
            vec = np.full(self.slots, vec)
        if not np.any(vec):
            return a
        counters.record("additions", level=a.level)
        return self._wrap(self.backend.add_plain(a.handle, vec, a.level, a.scale), a.level, a.scale,
                          "add_plain", a.size)

    def mul_plain(self, a: Cipher, values: Any, out_scale: float | None = None) -> Cipher:
        """ct × plaintext vector (or scalar), rescaled; lands exactly on ``out_scale`` (Δ default).

        1 level. The plaintext is encoded at out_scale · q_level / scale(a).
        """
        return self._mul_plain(a, values, out_scale, rescale=True)

    def mul_plain_raw(self, a: Cipher, values: Any, out_scale: float | None = None) -> Cipher:
        """ct × plaintext without the rescale, at scale out_scale · q_level: add several products of
        one level, then ``rescale(sum, out_scale)`` once (one rescale per sum instead of per product)."""
        return self._mul_plain(a, values, out_scale, rescale=False)

    def _mul_plain(self, a: Cipher, values: Any, out_scale: float | None, rescale: bool) -> Cipher:
        self._own(a)
        self._require(a, 1, "multiply by plaintext")
        if a.size != 2:
            a = self.relinearize(a)
        wanted = self.params.scale if out_scale is None else out_scale
        q = self.primes[a.level]
        pt_scale = wanted * q / a.scale
        if pt_scale < _MIN_PLAIN_SCALE:
            # The plaintext would be rounded to a few bits (a mask of 0.5 to 0 or 1), silently.
            raise DomainError(
                f"multiply by plaintext: a cipher at scale 2^{np.log2(a.scale):.1f} would need the "
                f"plaintext encoded at scale 2^{np.log2(pt_scale):.1f}; finish() or rescale the "
                "product first, or ask for a larger out_scale")
        vec = self._vector(values)
        if np.isscalar(vec):
            vec = np.full(self.slots, vec)
        if not np.any(vec):
            if rescale:
                return self.encrypt(np.zeros(self.slots), a.level - 1, wanted)
            return self.encrypt(np.zeros(self.slots), a.level, a.scale * pt_scale)
        counters.record("ct_pt_mults", level=a.level)
        prod = self._wrap(self.backend.multiply_plain(a.handle, vec, a.level, pt_scale), a.level,
                          a.scale * pt_scale, "multiply by plaintext")
        return self.rescale(prod, wanted) if rescale else prod

    def mul_raw(self, a: Cipher, b: Cipher) -> Cipher:
        """ct × ct without relinearization or rescale (size 3): sum several, then ``finish``."""
        self._own(a, b)
        if a.level > b.level:
            a = self.mod_switch(a, b.level)
        elif b.level > a.level:
            b = self.mod_switch(b, a.level)
        self._require(a, 1, "multiply")
        if a.size != 2:
            a = self.relinearize(a)
        if b.size != 2:
            b = self.relinearize(b)
        counters.record("ct_ct_mults", level=a.level)
        raw = self.backend.square(a.handle) if a is b else self.backend.multiply(a.handle, b.handle)
        return self._wrap(raw, a.level, a.scale * b.scale, "multiply", 3)

    def relinearize(self, a: Cipher) -> Cipher:
        if a.size == 2:
            return a
        counters.record("relinearizations", level=a.level)
        return Cipher(self.backend.relinearize(a.handle), a.level, a.scale, self.context_id, 2)

    def rescale(self, a: Cipher, wanted: float | None = None) -> Cipher:
        """Divide by the last prime of the level: scale(a) / q_level, taken as ``wanted`` if it differs
        from it by double rounding only (a sum of ``mul_plain_raw`` products aimed at ``wanted``)."""
        self._require(a, 1, "rescale")
        counters.record("rescales", level=a.level)
        q = self.primes[a.level]
        out = self.backend.rescale(a.handle)
        scale = a.scale / q if wanted is None else self._snap(out, a.scale / q, wanted)
        return self._wrap(out, a.level - 1, scale, "rescale", a.size)

    def finish(self, a: Cipher, wanted: float | None = None) -> Cipher:
        """Relinearize and rescale the result of ``mul_raw`` (or a sum of such results and of
        ``mul_plain_raw`` products): one relinearization and one rescale per sum."""
        return self.rescale(self.relinearize(a), wanted)

    def mul(self, a: Cipher, b: Cipher) -> Cipher:
        """ct × ct with relinearization and rescale: 1 level; scale(a)·scale(b)/q."""
        return self.finish(self.mul_raw(a, b))

    def square(self, a: Cipher) -> Cipher:
        return self.finish(self.mul_raw(a, a))

    def rotate(self, a: Cipher, step: int) -> Cipher:
        """Rotate slots left by ``step`` (right if negative), like ``np.roll(x, -step)``."""
        self._own(a)
        if a.size != 2:
            a = self.relinearize(a)
        out = a.handle
        path = compose_rotation(step, self.backend.rotation_steps, self.slots)
        for hop in path:
            counters.record("rotations", level=a.level)
            out = self.backend.rotate(out, hop)
        return Cipher(out, a.level, a.scale, self.context_id) if path else a

    def conjugate(self, a: Cipher) -> Cipher:
        self._own(a)
        if a.size != 2:
            a = self.relinearize(a)
        counters.record("conjugations", level=a.level)
        return Cipher(self.backend.conjugate(a.handle), a.level, a.scale, self.context_id)

    def real_part_times_two(self, a: Cipher) -> Cipher:
        """a + conj(a) = 2·Re(a): one conjugation, no level."""
        return self.add(a, self.conjugate(a))
