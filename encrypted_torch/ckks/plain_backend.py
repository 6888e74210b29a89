"""The plaintext slot backend: SEAL's slot semantics in exact numpy arithmetic.

Same interface, same rotation keys and the same level and scale bookkeeping as the SEAL backend
(the evaluator above both does it), so algorithms are tested fast, exactly, and with their
operation counts asserted. In checked mode it raises DomainError where CKKS would wrap silently.
"""

from __future__ import annotations

import io
from collections.abc import Iterable

import numpy as np

from ..errors import SerializationError
from .backend import Backend
from .params import CKKSParams
from .seal_backend import data_primes


class PlainBackend(Backend):
    """Evaluation on cleartext slot vectors (complex128); handles are numpy arrays."""

    name = "plain"

    def __init__(self, params: CKKSParams, steps: Iterable[int], checked: bool = True) -> None:
        self.params = params
        self.slots = params.slots
        self.rotation_steps = frozenset(s % self.slots for s in steps) - {0}
        self.primes = data_primes(params)
        self.checked = checked

    def _vec(self, values: np.ndarray | complex | float) -> np.ndarray:
        arr = np.asarray(values, dtype=np.complex128)
        return np.broadcast_to(arr, (self.slots,)) if arr.ndim == 0 else arr

    def encrypt(self, values: np.ndarray, level: int, scale: float) -> np.ndarray:
        return self._vec(values).copy()

    def add(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a + b

    def sub(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a - b

    def negate(self, a: np.ndarray) -> np.ndarray:
        return -a

    def add_plain(self, a: np.ndarray, values: np.ndarray, level: int, scale: float) -> np.ndarray:
        return a + self._vec(values)

    def multiply(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a * b

    def square(self, a: np.ndarray) -> np.ndarray:
        return a * a

    def relinearize(self, a: np.ndarray) -> np.ndarray:
        return a

    def rescale(self, a: np.ndarray) -> np.ndarray:
        return a

    def multiply_plain(self, a: np.ndarray, values: np.ndarray, level: int, scale: float) -> np.ndarray:
        return a * self._vec(values)

    def rotate(self, a: np.ndarray, step: int) -> np.ndarray:
        return np.roll(a, -step)  # SEAL's positive steps rotate left

    def conjugate(self, a: np.ndarray) -> np.ndarray:
        return np.conj(a)

    def mod_switch(self, a: np.ndarray, level: int) -> np.ndarray:
        return a

    def set_scale(self, a: np.ndarray, scale: float) -> None:
        pass

    def check_range(self, a: np.ndarray, level: int, scale: float, op: str) -> None:
        """Raise DomainError where SEAL would wrap: |value| * scale must stay below Q_level / 2."""
        if not self.checked:
            return
        bound = float(np.prod([float(q) for q in self.primes[: level + 1]])) / 2 / scale
        peak = float(np.max(np.abs(a))) if a.size else 0.0
        if not np.isfinite(peak) or peak >= bound:
            from ..errors import DomainError

            raise DomainError(
                f"{op}: a value of magnitude {peak:.3g} exceeds what level {level} can hold "
                f"(< {bound:.3g} at scale 2^{np.log2(scale):.1f}); in CKKS it would wrap silently"
            )

    def checked_values(self, a: np.ndarray) -> np.ndarray | None:
        """The slot values (held in the clear) in checked mode, for the domain checks of approximations."""
        return np.asarray(a) if self.checked else None

    def handle_to_bytes(self, a: np.ndarray) -> bytes:
        buf = io.BytesIO()
        np.save(buf, np.asarray(a, dtype=np.complex128), allow_pickle=False)
        return buf.getvalue()

    def handle_from_bytes(self, data: bytes) -> np.ndarray:
        try:
            arr = np.load(io.BytesIO(data), allow_pickle=False)
        except Exception as err:
            raise SerializationError(f"not a plaintext slot vector: {err}") from err
        if arr.shape != (self.slots,) or arr.dtype != np.complex128:
            raise SerializationError(f"slot vector of shape {arr.shape}, expected ({self.slots},)")
        if not np.all(np.isfinite(arr)):
            raise SerializationError("slot vector holds NaN or inf")
        return arr
