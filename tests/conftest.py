"""Shared fixtures: keys generated once per session; hypothesis profiles (fast in CI, thorough on demand).

Choose the thorough profile with ENCRYPTED_TORCH_HYPOTHESIS=thorough; ENCRYPTED_TORCH_HYPOTHESIS=fuzz runs
the decoder fuzzers of tests/test_fuzz.py with 10,000 random inputs each (see docs/protocol.md, "Fuzzing").
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

import encrypted_torch as et

settings.register_profile(
    "fast", max_examples=12, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "thorough", max_examples=200, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "fuzz", max_examples=10_000, deadline=None, derandomize=False,
    suppress_health_check=list(HealthCheck),
)
settings.load_profile(os.environ.get("ENCRYPTED_TORCH_HYPOTHESIS", "fast"))


@pytest.fixture(scope="session")
def seal_ctx() -> et.SecretContext:
    """Real CKKS keys on the small 'test' preset (N=8192, 3 levels), all ±2^i rotations."""
    return et.SecretContext.create("test", backend="seal")


@pytest.fixture(scope="session")
def plain_ctx() -> et.SecretContext:
    """The exact plaintext slot backend with the same parameters and keys as seal_ctx."""
    return et.SecretContext.create("test", backend="plain")


@pytest.fixture(scope="session", params=["plain", "seal"])
def any_ctx(request: pytest.FixtureRequest, plain_ctx: et.SecretContext,
            seal_ctx: et.SecretContext) -> et.SecretContext:
    return plain_ctx if request.param == "plain" else seal_ctx
