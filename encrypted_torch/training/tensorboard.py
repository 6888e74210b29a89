"""Live metrics where PyTorch users look: TensorBoard event files through ``torch.utils.tensorboard``.

Needs the ``tensorboard`` extra. Who writes what follows who may see it: the server's side (``Trainer``
callbacks) writes step time, refreshes, levels and bytes, which it knows anyway; validation loss and
accuracy come from decrypted logits, so only the key owner writes them (``log_validation`` with its
``history``). ``tensorboard --logdir DIR`` shows both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import EncTorchError

__all__ = ["TensorBoardCallback", "TensorBoardLogger", "TensorBoardMissingError"]


class TensorBoardMissingError(EncTorchError, ImportError):
    """``--tensorboard`` without the tensorboard package."""


class TensorBoardLogger:
    """A ``SummaryWriter`` with the run's scalars under stable tags (``step/…``, ``validation/…``)."""

    def __init__(self, logdir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise TensorBoardMissingError("TensorBoard logging needs the tensorboard package: "
                                          "pip install 'encrypted_torch[tensorboard]'") from None
        self.writer = SummaryWriter(log_dir=str(logdir))
        self._epochs_logged = 0

    def log_step(self, global_step: int, info: dict[str, Any]) -> None:
        """A finished step as the server reports it: seconds, refreshes, weight level, bytes."""
        for key in ("seconds", "refreshes", "weight_level", "bytes"):
            if info.get(key) is not None:
                self.writer.add_scalar(f"step/{key}", float(info[key]), global_step)

    def log_validation(self, history: list[dict[str, float]]) -> None:
        """The key owner's new epochs: validation loss and accuracy from its decrypted logits."""
        for row in history[self._epochs_logged:]:
            epoch = int(row["epoch"]) + 1
            self.writer.add_scalar("validation/loss", row["val_loss"], epoch)
            self.writer.add_scalar("validation/accuracy", row["val_acc"], epoch)
        self._epochs_logged = max(self._epochs_logged, len(history))
        self.writer.flush()

    def log_text(self, tag: str, text: str) -> None:
        self.writer.add_text(tag, text)

    def close(self) -> None:
        self.writer.close()


class TensorBoardCallback:
    """A ``TrainerCallback`` writing each step's time, refreshes and weight level; with ``key_owner`` (in
    process only: the key owner's own history) also its validation loss and accuracy after each epoch."""

    def __init__(self, logger: TensorBoardLogger, key_owner: Any = None) -> None:
        self.logger, self.key_owner = logger, key_owner

    def on_step_end(self, trainer: Any, epoch: int, step: int) -> None:
        rec = trainer.result.steps[-1]
        self.logger.log_step(len(trainer.result.steps), {"seconds": rec.seconds, "refreshes": rec.ops["refreshes"],
                                                         "weight_level": rec.weight_level})

    def on_epoch_end(self, trainer: Any, epoch: int) -> None:
        if self.key_owner is not None:
            self.logger.log_validation(self.key_owner.history)
