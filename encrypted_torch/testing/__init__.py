"""Testing encrypted code: ``assert_close``, hypothesis strategies, pytest fixtures and profiles.

>>> from encrypted_torch.testing import assert_close, secret_context       # doctest: +SKIP
>>> from encrypted_torch.testing.strategies import enc_tensors              # needs hypothesis

``strategies`` and ``profiles`` need hypothesis (in the ``test`` extra); this module and the pytest
plugin (``et_plain_ctx``, ``et_seal_ctx``, ``et_any_ctx``) do not.
"""

from .compare import assert_close
from .contexts import BACKENDS, known_secret, secret_context
from .profiles import PROFILES, load_profile, register_profiles
from .tolerance import Tolerance, default_keyswitches, tolerance

__all__ = ["BACKENDS", "PROFILES", "Tolerance", "assert_close", "default_keyswitches", "known_secret",
           "load_profile", "register_profiles", "secret_context", "tolerance"]
