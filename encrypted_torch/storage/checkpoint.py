"""Training checkpoints: encrypted weights and optimizer state, position, RNG and history, in one file.

A checkpoint is ``Trainer.state_dict()`` (nested dicts and lists of JSON values and EncTensors)
in the ``serialize`` framing: a JSON ``meta`` section where each EncTensor is replaced by
``{"$tensor": name}``, and one section per tensor. It is written atomically, so a kill during a
save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..ckks import serialize
from ..errors import ContextMismatchError, EncTorchError, SerializationError
from ..tensor.enctensor import EncTensor
from .atomic import atomic_write_bytes, read_bounded
from .errors import CheckpointError, WrongKeyError
from .jsonio import loads_strict

KIND = "checkpoint"
FORMAT = "encrypted_torch.checkpoint"
VERSION = 1
MAX_CHECKPOINT_BYTES = 1 << 36  # 64 GiB: far above any model we train, below what would exhaust a disk read
_TENSOR = "$tensor"


def encode_checkpoint(state: dict[str, Any], fingerprint: str) -> bytes:
    """Serialize a trainer state (dict keys become strings; tuples become lists)."""
    sections: dict[str, bytes] = {}
    body = _flatten(state, sections)
    meta = {"format": FORMAT, "version": VERSION, "fingerprint": fingerprint, "saved_at": time.time(),
            "state": body}
    return serialize.pack(KIND, {"meta": serialize.dumps_json(meta), **sections})


def decode_checkpoint(data: bytes, ctx: Any, path: str | Path = "checkpoint") -> dict[str, Any]:
    """Inverse of ``encode_checkpoint`` under ``ctx``; typed errors naming ``path``."""
    try:
        sections = serialize.unpack(data, KIND)
        (meta_raw,) = serialize.require(sections, "meta")
        meta = loads_strict(meta_raw, "checkpoint metadata")
    except SerializationError as err:
        raise CheckpointError(path, str(err)) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise CheckpointError(path, f"not a {FORMAT} version {VERSION}")
    if not isinstance(meta.get("fingerprint"), str) or meta["fingerprint"] != ctx.fingerprint:
        raise WrongKeyError(path, "checkpoint of a session under another public key")
    referenced: set[str] = set()
    state = _restore(meta.get("state"), sections, ctx, path, referenced)
    if not isinstance(state, dict):
        raise CheckpointError(path, "the checkpoint state is not an object")
    unused = set(sections) - referenced - {"meta"}
    if unused:
        raise CheckpointError(path, f"sections no tensor refers to: {sorted(unused)[:5]}")
    return state


def save_checkpoint(path: str | Path, state: dict[str, Any], fingerprint: str) -> None:
    """Write ``encode_checkpoint(state)`` to ``path`` atomically."""
    atomic_write_bytes(path, encode_checkpoint(state, fingerprint))


def load_checkpoint(path: str | Path, ctx: Any, max_bytes: int = MAX_CHECKPOINT_BYTES) -> dict[str, Any]:
    """Read a checkpoint under ``ctx``; MissingFileError, CheckpointError or WrongKeyError naming ``path``."""
    path = Path(path)
    return decode_checkpoint(read_bounded(path, max_bytes, "checkpoint", CheckpointError), ctx, path)


def _flatten(obj: Any, sections: dict[str, bytes]) -> Any:
    if isinstance(obj, EncTensor):
        name = f"t{len(sections)}"
        sections[name] = obj.to_bytes()
        return {_TENSOR: name}
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            key = str(k)
            if key.startswith("$"):
                raise ValueError(f"checkpoint keys may not start with '$': {key!r}")
            out[key] = _flatten(v, sections)
        return out
    if isinstance(obj, (list, tuple)):
        return [_flatten(v, sections) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint a {type(obj).__name__}")


def _restore(obj: Any, sections: dict[str, bytes], ctx: Any, path: str | Path, referenced: set[str]) -> Any:
    # Recursion is safe: loads_strict bounds the nesting depth (serialize.MAX_JSON_DEPTH).
    if isinstance(obj, dict):
        if _TENSOR in obj:
            name = obj[_TENSOR]
            if len(obj) != 1 or not isinstance(name, str) or name not in sections or name == "meta":
                raise CheckpointError(path, f"dangling tensor reference {str(name)[:40]!r}")
            if name in referenced:
                raise CheckpointError(path, f"tensor {name} is referenced twice")
            referenced.add(name)
            try:
                return EncTensor.from_bytes(sections[name], ctx)
            except ContextMismatchError as err:
                raise WrongKeyError(path, f"tensor {name}: {err}") from None
            except EncTorchError as err:
                raise CheckpointError(path, f"tensor {name}: {err}") from None
        return {k: _restore(v, sections, ctx, path, referenced) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_restore(v, sections, ctx, path, referenced) for v in obj]
    return obj


class Checkpointer:
    """Trainer callback: save every ``every`` steps (0: never mid-epoch) and at every epoch end."""

    def __init__(self, path: str | Path, fingerprint: str, every: int = 1,
                 on_save: Callable[[dict[str, int]], None] | None = None) -> None:
        if every < 0:
            raise ValueError(f"checkpoint interval must be ≥ 0, got {every}")
        self.path, self.fingerprint, self.every, self.on_save = Path(path), fingerprint, every, on_save
        self.saves = 0

    def on_step_end(self, trainer: Any, epoch: int, step: int) -> None:
        if self.every and len(trainer.result.steps) % self.every == 0:
            self.save(trainer)

    def on_epoch_end(self, trainer: Any, epoch: int) -> None:
        self.save(trainer)

    def save(self, trainer: Any) -> None:
        state = trainer.state_dict()
        save_checkpoint(self.path, state, self.fingerprint)
        self.saves += 1
        if self.on_save is not None:
            self.on_save({"epoch": state["epoch"], "step": state["step"], "steps_done": len(trainer.result.steps)})
