"""One exception hierarchy for everything encrypted_torch raises on bad input or bad state."""

from __future__ import annotations


class EncTorchError(Exception):
    """Base class of every error encrypted_torch raises on purpose."""


class ShapeError(EncTorchError, ValueError):
    """Operands whose shapes or block layouts do not fit the operation."""


class KeyRoleError(EncTorchError):
    """An operation needs a key the context does not hold (decrypt on the server, say)."""


class MissingRotationKeyError(KeyRoleError):
    """A rotation step has no Galois key and cannot be composed from the keys present."""


class DepthError(EncTorchError):
    """A ciphertext has fewer levels left than the operation consumes."""

    def __init__(self, op: str, needed: int, left: int, hint: str | None = None) -> None:
        self.op, self.needed, self.left, self.hint = op, needed, left, hint
        # No preset holds a training step (the softmax alone takes 24-72 levels; SEAL cannot
        # bootstrap), so the advice is a refresher, not a deeper preset.
        hint = hint or (
            "run it inside `with encrypted_torch.refresh_with(key_owner):` so the key owner refreshes "
            "the operand (Trainer.fit does this for you)"
        )
        super().__init__(f"{op} needs {needed} level(s), {left} left; {hint}")

    def __reduce__(self) -> tuple:  # picklable, so a worker process can hand it back
        return DepthError, (self.op, self.needed, self.left, self.hint)


class EncryptionRequiredError(EncTorchError, TypeError):
    """A plaintext torch.Tensor where an encrypted one is needed (``model(x)``, ``load_state_dict``)."""


class DomainError(EncTorchError, ValueError):
    """Values outside the domain an approximation or the CKKS modulus can hold."""


class SerializationError(EncTorchError, ValueError):
    """Bytes that are not a valid serialized encrypted_torch object."""


class ContextMismatchError(EncTorchError):
    """Operands encrypted under different keys or parameters."""


class ContextNotLoadedError(EncTorchError, LookupError):
    """Unpickled ciphertexts whose public context is not loaded in this process."""


class GraphFreedError(EncTorchError, RuntimeError):
    """A second backward through a graph whose saved tensors were freed (torch's retain_graph rule)."""


class JobPolicyError(EncTorchError):
    """The server asked the key owner for something the client's own copy of the job does not plan
    (an unplanned refresh, a verdict beyond the job's epochs or after a stop, logits of the wrong
    shape). The key owner ends the job: a refusal cannot be queried again."""


class KeyOwnerRequiredError(KeyRoleError):
    """An op needs the key owner's help (the exact softmax) and none is reachable from here."""
