"""Client (key owner) side: the only side that holds a SecretContext."""

from .encrypt_data import encrypt_batches, one_hot
from .key_owner import KeyOwner

__all__ = ["KeyOwner", "encrypt_batches", "one_hot"]
