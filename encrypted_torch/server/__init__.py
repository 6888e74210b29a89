"""The training server: holds public material only, drives training, asks the key owner to refresh.

Run it with ``python -m encrypted_torch.server --port 8765 --workdir DIR [--resume]``;
docs/protocol.md describes the protocol, the storage formats and the threat model.
"""

from .app import ServerConfig, SessionStore, TrainingServer
from .job import BUILDERS, validate_job
from .session import Limits, Session

__all__ = ["BUILDERS", "Limits", "ServerConfig", "Session", "SessionStore", "TrainingServer", "validate_job"]
