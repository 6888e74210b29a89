"""The training job's schema and builders, re-exported: they live in ``training.job``, which the
key owner reads too (its own copy of the job's plan) without importing the server."""

from ..training.job import BUILDERS, DEFAULTS, OPTIMIZERS, Builder, build_hetal_linear, make_optimizer, validate_job

__all__ = ["BUILDERS", "DEFAULTS", "OPTIMIZERS", "Builder", "build_hetal_linear", "make_optimizer", "validate_job"]
