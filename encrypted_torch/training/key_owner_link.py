"""What the server needs from the key owner: refreshes and one continue/stop bit per epoch.

In one process the key owner is ``client.KeyOwner``; across processes it is a network proxy
with the same two methods. The server never learns the validation loss, only the stop bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ..ckks.evaluator import Cipher
from ..tensor.enctensor import EncTensor


@dataclass
class EpochVerdict:
    """The key owner's answer at an epoch end: fresh encryptions of the state sent, and the bit."""

    refreshed: dict[str, EncTensor]
    stop: bool


class KeyOwnerLink(Protocol):
    def refresh(self, ciphers: Sequence[Cipher], stage: str = "") -> list[Cipher]: ...

    def end_epoch(self, epoch: int, dataset: str, val_logits: list[EncTensor],
                  state: dict[str, EncTensor]) -> EpochVerdict: ...

    def best_state(self) -> dict[str, EncTensor]: ...
