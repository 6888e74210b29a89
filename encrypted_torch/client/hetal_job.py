"""The key owner's half of a HETAL run, re-exported: it lives in ``hetal.prepare`` (the HETAL
application's one home), next to the in-process training ``hetal.run`` goes through."""

from ..hetal.prepare import PreparedRun, decrypt_linear, prepare_hetal, run_in_process, train_in_process

__all__ = ["PreparedRun", "decrypt_linear", "prepare_hetal", "run_in_process", "train_in_process"]
