"""``assert_close`` for encrypted results, in the style of ``torch.testing.assert_close``."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..tensor.enctensor import EncTensor
from .contexts import known_secret
from .tolerance import Tolerance, tolerance


def _decryptor(secret: Any, x: EncTensor) -> Any:
    """A SecretContext, anything holding one as ``.secret`` (a KeyOwner), or the kit's own context."""
    if secret is not None and not hasattr(secret, "decrypt_vector") and hasattr(secret, "secret"):
        secret = secret.secret
    if secret is None:
        secret = known_secret(x.ctx.fingerprint)
    if secret is None or not hasattr(secret, "decrypt"):
        raise TypeError("assert_close got an EncTensor under a key the testing kit did not make: pass "
                        "secret= (the key owner's SecretContext or KeyOwner) to decrypt it")
    return secret


def _as_tensor(x: Any, secret: Any, what: str) -> torch.Tensor:
    if isinstance(x, EncTensor):
        return _decryptor(secret, x).decrypt(x)
    if isinstance(x, (torch.Tensor, np.ndarray, float, int, list, tuple)):
        return torch.as_tensor(x).detach().cpu().to(torch.float64)
    raise TypeError(f"assert_close: {what} must be an EncTensor, a tensor, an array or a number, "
                    f"not {type(x).__name__}")


def _default_tolerance(enc: list[EncTensor], magnitude: float, depth: int | None,
                       keyswitches: int | None) -> Tolerance:
    if not enc:  # plaintext against plaintext: torch float64 rounding
        return tolerance(None, "torch", magnitude=magnitude)
    ctx = enc[0].ctx
    level = min(x.level for x in enc)
    return tolerance(ctx.params, ctx.backend_name, level=level, magnitude=magnitude, depth=depth,
                     keyswitches=keyswitches)


def assert_close(actual: Any, expected: Any, *, rtol: float | None = None, atol: float | None = None,
                 secret: Any = None, magnitude: float | None = None, depth: int | None = None,
                 keyswitches: int | None = None, check_shape: bool = True, msg: str | None = None) -> None:
    """Assert ``|actual − expected| ≤ atol + rtol·|expected|`` elementwise, as torch does.

    ``actual`` (and ``expected``) may be EncTensors, decrypted with ``secret`` (a SecretContext or a
    KeyOwner; not needed for tensors made by the kit's fixtures and strategies), or tensors, arrays and
    numbers. ``atol`` and ``rtol`` default to the noise bound of the result's backend, scale and levels
    consumed (encrypted_torch/testing/tolerance.py states the formula); ``magnitude`` (default:
    max |expected|), ``depth`` (default: levels consumed) and ``keyswitches`` tune that default. Give
    both ``atol`` and ``rtol`` to override it, as in torch.

    >>> x = et.encrypt(a, secret)                                       # doctest: +SKIP
    >>> assert_close(x * x + 1, a * a + 1, secret=secret)                # doctest: +SKIP
    """
    if (atol is None) != (rtol is None):
        raise ValueError("give both atol and rtol, or neither (as torch.testing.assert_close)")
    got, want = _as_tensor(actual, secret, "actual"), _as_tensor(expected, secret, "expected")
    if check_shape and got.shape != want.shape:
        raise AssertionError(f"The values for attribute 'shape' do not match: {tuple(got.shape)} != "
                             f"{tuple(want.shape)} (actual vs expected).")
    got, want = torch.broadcast_tensors(got, want)
    if not torch.isfinite(want).all():
        raise AssertionError("expected has NaN or inf; an encrypted result never does")
    if atol is None:
        mag = float(want.abs().max()) if magnitude is None and want.numel() else float(magnitude or 0.0)
        enc = [x for x in (actual, expected) if isinstance(x, EncTensor)]
        tol = _default_tolerance(enc, mag, depth, keyswitches)
    else:
        tol = Tolerance(float(atol), float(rtol), "given")
    diff = (got - want).abs()
    allowed = tol.atol + tol.rtol * want.abs()
    bad = ~(diff <= allowed)  # NaN in actual counts as a mismatch
    if not bad.any():
        return
    total = diff.numel()
    rel = diff / want.abs()
    flat = int(torch.nan_to_num(diff, nan=float("inf")).argmax())
    index = tuple(int(i) for i in np.unravel_index(flat, diff.shape)) if diff.ndim else ()
    flat_rel = int(torch.nan_to_num(rel, nan=float("inf")).argmax())
    index_rel = tuple(int(i) for i in np.unravel_index(flat_rel, diff.shape)) if diff.ndim else ()
    lines = [
        "Tensor-likes are not close!" if msg is None else msg,
        "",
        f"Mismatched elements: {int(bad.sum())} / {total} ({100 * float(bad.sum()) / total:.1f}%)",
        f"Greatest absolute difference: {float(diff.flatten()[flat]):.6g} at index {index} "
        f"(up to {tol.atol:.3g} allowed)",
        f"Greatest relative difference: {float(rel.flatten()[flat_rel]):.6g} at index {index_rel} "
        f"(up to {tol.rtol:.3g} allowed)",
        f"Tolerance: {tol.source}",
    ]
    raise AssertionError("\n".join(lines))
