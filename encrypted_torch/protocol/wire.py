"""Which of the wire's byte cuts a process uses: one setting, read in one place.

``ENCRYPTED_TORCH_WIRE_CUTS`` is ``all`` (the default), ``none``, or a comma list of:

- ``seeded``: the key owner sends its fresh encryptions (refresh and gradient replies) in SEAL's
  seeded form, about half the bytes (the receiver expands the seed when it loads them);
- ``trim``: the server asks for a refresh at the level its consumer uses (a matrix product's
  operand), not the top: fewer primes, fewer bytes, a cheaper encryption.

Every cut leaves the values and the refresh counts unchanged; turning them off exists to measure
each one (benchmarks/wire.py).
"""

from __future__ import annotations

import os

CUTS = ("seeded", "trim")
ENV = "ENCRYPTED_TORCH_WIRE_CUTS"


def wire_cuts() -> frozenset[str]:
    """The cuts this process uses (``ENCRYPTED_TORCH_WIRE_CUTS``); ValueError naming an unknown one."""
    raw = os.environ.get(ENV, "all").strip().lower()
    if raw in ("", "all"):
        return frozenset(CUTS)
    if raw == "none":
        return frozenset()
    names = {n.strip() for n in raw.split(",") if n.strip()}
    unknown = names - set(CUTS)
    if unknown:
        raise ValueError(f"{ENV}: unknown cut(s) {sorted(unknown)}; use 'all', 'none' or a comma list of {CUTS}")
    return frozenset(names)
