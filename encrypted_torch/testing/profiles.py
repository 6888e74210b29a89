"""Hypothesis profiles for encrypted tests (keys are slow, so examples are few but new each run).

- ``ci`` (the project's default): 10 new random examples per test and run (``derandomize=False``),
  no example database, failures printed with a ``@reproduce_failure`` blob. Each CI run explores
  inputs no earlier run tried, at the cost of today's fixed replay.
- ``fast``: 12 derandomized examples, the same every run (bisecting a regression).
- ``thorough``: 200 random examples (``pytest -m slow`` or before a release).
- ``fuzz``: 10,000 random examples, every health check off (the decoder fuzzers, docs/protocol.md).
"""

from __future__ import annotations

import os

PROFILES = ("ci", "fast", "thorough", "fuzz")


def register_profiles() -> None:
    """Register ``ci``, ``fast``, ``thorough`` and ``fuzz`` with hypothesis (without loading one)."""
    from hypothesis import HealthCheck, settings

    slow_ok = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large]
    settings.register_profile("ci", max_examples=10, deadline=None, derandomize=False, database=None,
                              print_blob=True, suppress_health_check=slow_ok)
    settings.register_profile("fast", max_examples=12, deadline=None, derandomize=True,
                              suppress_health_check=slow_ok)
    settings.register_profile("thorough", max_examples=200, deadline=None, print_blob=True,
                              suppress_health_check=slow_ok)
    settings.register_profile("fuzz", max_examples=10_000, deadline=None, derandomize=False,
                              suppress_health_check=list(HealthCheck))


def load_profile(default: str = "ci", env: str = "ENCRYPTED_TORCH_HYPOTHESIS") -> str:
    """Register the profiles and load the one named by ``$ENCRYPTED_TORCH_HYPOTHESIS`` (else ``default``)."""
    from hypothesis import settings

    register_profiles()
    name = os.environ.get(env, default)
    settings.load_profile(name)
    return name
