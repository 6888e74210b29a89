"""HETAL end to end: configuration, the encrypted run and its plaintext twin, the CLI."""

from .config import HetalConfig, config_for
from .pipeline import RunReport, run

__all__ = ["HetalConfig", "RunReport", "config_for", "run"]
