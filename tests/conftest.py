"""Shared fixtures and hypothesis profiles, from the testing kit (encrypted_torch/testing/).

Keys are generated once per session by the kit's pytest plugin (``et_plain_ctx``, ``et_seal_ctx``,
``et_any_ctx``); ``plain_ctx``, ``seal_ctx`` and ``any_ctx`` are their names in this suite.

Hypothesis profile ``ci`` by default: new random examples each run (encrypted_torch/testing/profiles.py).
ENCRYPTED_TORCH_HYPOTHESIS=fast replays 12 derandomized examples, =thorough draws 200, and =fuzz runs
the decoder fuzzers of tests/test_fuzz.py with 10,000 random inputs each (see docs/protocol.md, "Fuzzing").
"""

from __future__ import annotations

import pytest

import encrypted_torch as et
from encrypted_torch.testing import load_profile

load_profile("ci")


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin("encrypted_torch"):  # a checkout on PYTHONPATH, not pip-installed
        config.pluginmanager.import_plugin("encrypted_torch.testing.plugin")


@pytest.fixture(scope="session")
def seal_ctx(et_seal_ctx: et.SecretContext) -> et.SecretContext:
    """Real CKKS keys on the small 'test' preset (N=8192, 3 levels), all ±2^i rotations."""
    return et_seal_ctx


@pytest.fixture(scope="session")
def plain_ctx(et_plain_ctx: et.SecretContext) -> et.SecretContext:
    """The exact plaintext slot backend with the same parameters and keys as seal_ctx."""
    return et_plain_ctx


@pytest.fixture(scope="session")
def any_ctx(et_any_ctx: et.SecretContext) -> et.SecretContext:
    """Each backend in turn (test ids [plain] and [seal])."""
    return et_any_ctx
