"""The pytest plugin (entry point ``pytest11: encrypted_torch``): fixtures with keys made once per session.

- ``et_plain_ctx``: a SecretContext of the ``test`` preset on the exact plaintext backend;
- ``et_seal_ctx``: the same preset on real CKKS (SEAL, N = 8192, 3 levels, all ±2^i rotations);
- ``et_any_ctx``: parametrized over both, so one test body runs exactly and on CKKS.

The preset is ``test`` unless ``--et-preset`` (or the ini option ``et_preset``) names another. The
fixtures share their keys with ``encrypted_torch.testing.secret_context`` and the strategies. The plugin
loads no hypothesis profile: call ``encrypted_torch.testing.load_profile()`` in your conftest for ours.
"""

from __future__ import annotations

import pytest

from .contexts import BACKENDS, secret_context


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("encrypted_torch")
    group.addoption("--et-preset", default=None, help="CKKS preset of the et_*_ctx fixtures (default: test)")
    parser.addini("et_preset", "CKKS preset of the et_*_ctx fixtures", default="test")


@pytest.fixture(scope="session")
def et_preset(pytestconfig: pytest.Config) -> str:
    """The CKKS preset the context fixtures use (``--et-preset``, ini ``et_preset``, else ``test``)."""
    return pytestconfig.getoption("et_preset") or pytestconfig.getini("et_preset")


@pytest.fixture(scope="session")
def et_plain_ctx(et_preset: str):
    """The exact plaintext slot backend: same API, levels and keys' layout as SEAL, no noise, no encryption."""
    return secret_context(et_preset, "plain")


@pytest.fixture(scope="session")
def et_seal_ctx(et_preset: str):
    """Real CKKS keys (SEAL), generated once per session."""
    return secret_context(et_preset, "seal")


@pytest.fixture(scope="session", params=BACKENDS)
def et_any_ctx(request: pytest.FixtureRequest, et_preset: str):
    """Each backend in turn: the plaintext backend, then SEAL."""
    return secret_context(et_preset, request.param)
