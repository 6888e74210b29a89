"""Client (key owner) side: the only side that holds a SecretContext."""

from .encrypt_data import encrypt_batches, one_hot
from .key_owner import KeyOwner
from .remote import RemoteSession

__all__ = ["KeyOwner", "RemoteSession", "encrypt_batches", "one_hot"]
