"""Encrypted inference as a service: a finished session's trained model applied to a client's ciphertexts.

The client sends its samples' features encrypted under its own key (``InferRequest``); the server
runs the job's model forward on them (for ``hetal-linear``: x Wᵀ + b, one DiagABT product) and sends
the encrypted logits back (``InferReply``). Only the key owner can decrypt either, so the server
learns the row count and the timing, nothing else; the key owner answers nothing new (no refresh,
no verdict), so inference opens no oracle on the client's side.

Depth: the stored model is the key owner's fresh encryption of the best epoch's weights (the
trainer loads ``best_state()`` when training ends), at the top level, so no refresh is ever needed.
The client encrypts its features at the lowest level the forward pass takes them at (a dry run both
sides make, ``training.inference_plan``: 3 of 7 for ``hetal-linear`` at preset "fast", which halves
the bytes and the product's time). Both levels are checked here, before any product.
"""

from __future__ import annotations

from typing import Any

from ..autograd import no_grad
from ..errors import EncTorchError
from ..protocol.channel import Channel
from ..protocol.ciphers import decode_ciphers
from ..protocol.errors import ProtocolError, SessionError
from ..protocol.messages import InferReply, InferRequest
from ..storage.checkpoint import load_checkpoint
from ..storage.jsonio import loads_strict
from ..tensor.enctensor import EncTensor
from ..training.inference_plan import input_layout, input_level, model_unit
from .job import validate_job
from .limits import cipher_bytes

FRAMING_BYTES = 64 << 10  # a cipher list's metadata and section headers, beyond its ciphertexts


class InferenceService:
    """Answers one connection's InferRequests with its session's trained encrypted model.

    The model is loaded on the first request and kept while this connection is attached (it holds
    the session's context, which the session parks or drops when the connection ends).
    """

    def __init__(self, session: Any) -> None:
        self.session = session
        self._model: Any = None
        self._in_features = 0
        self._unit: tuple[int, int] = (0, 0)
        self._level = 0  # the lowest level the model's forward pass takes its input at (inference_plan)
        self._cipher_bytes = 0

    def answer(self, channel: Channel, msg: InferRequest, generation: int) -> None:
        """Check the request against the limits and the model, compute the logits, send them back."""
        session, limits = self.session, self.session.limits
        if session.record["stage"] != "done":
            raise SessionError(f"this session has no trained model yet (stage {session.record['stage']!r}): "
                               "finish training (start_training or resume_training) before asking for inference")
        if msg.rows > limits.max_infer_rows:
            raise SessionError(f"an inference request of {msg.rows} rows is over this server's limit of "
                               f"{limits.max_infer_rows}; send smaller batches (--batch-size), or the server's "
                               "operator can raise --max-infer-rows")
        used = inferred_rows(session.record)
        if used + msg.rows > limits.max_infer_session_rows:
            raise SessionError(f"this session's inference quota: {used} rows inferred + {msg.rows} asked is over "
                               f"{limits.max_infer_session_rows}; the server's operator can raise "
                               "--max-infer-session-rows")
        model, ctx = self._load(), session.context()
        x = self._features(msg, ctx)
        with no_grad():
            logits = model(x)
        session.record["inferred_rows"] = used + msg.rows
        session._save_record()
        channel.send(InferReply(msg.request_id, msg.rows, logits.to_bytes()))

    def _features(self, msg: InferRequest, ctx: Any) -> EncTensor:
        """The request's ciphertexts as the model's input, their bytes bounded by the declared rows first."""
        layout = input_layout(msg.rows, self._in_features, self._unit)
        n_a, n_b = layout.grid
        bound = n_a * n_b * (2 * self._cipher_bytes + 1024) + FRAMING_BYTES
        if len(msg.x) > bound:
            raise ProtocolError(f"infer_request: {len(msg.x)} bytes for {msg.rows} rows × {self._in_features} "
                                f"features, over the {bound} bytes their {n_a * n_b} blocks can need")
        # ContextMismatchError for another key's ciphertexts, ProtocolError for another count
        ciphers = decode_ciphers(msg.x, ctx, expected=n_a * n_b)
        low = sorted({c.level for c in ciphers if c.level < self._level})
        if low:
            raise ProtocolError(f"infer_request: features at level(s) {low}; this model's forward pass needs "
                                f"level {self._level} or more: encrypt them afresh at that level")
        return EncTensor([ciphers[i: i + n_b] for i in range(0, len(ciphers), n_b)], layout, ctx)

    def _load(self) -> Any:
        """The session's model, built by the job's builder from the stored final state (checked fresh)."""
        if self._model is not None:
            return self._model
        session = self.session
        ctx = session.context()
        job = validate_job(loads_strict((session.dir / "job.json").read_bytes(), "job"), session.builders)
        state = load_checkpoint(session.dir / "final_model.et", ctx)["model"]
        if not state or not all(isinstance(t, EncTensor) for t in state.values()):
            raise SessionError("the stored final model holds no encrypted parameters")
        low = {k: t.level for k, t in state.items() if t.level < ctx.top_level}
        if low:
            raise SessionError(f"the stored model's {sorted(low)} are at level(s) {sorted(set(low.values()))}, below "
                               f"the top level {ctx.top_level}: it is not the key owner's fresh best state, so a "
                               "product could run out of levels; train again with this server version")
        layouts = {k: t.layout for k, t in state.items()}
        self._unit = model_unit(layouts)
        self._level = input_level(ctx, job, layouts, session.builders)
        self._in_features = int(job["in_features"])
        try:
            self._model, _, _ = session.builders[job["model"]](ctx, job, state, self._unit)
        except EncTorchError:
            raise
        except (KeyError, TypeError, ValueError) as err:
            raise SessionError(f"cannot rebuild the job's model from the stored final state: {err!r}") from None
        self._cipher_bytes = cipher_bytes(ctx)
        return self._model


def inferred_rows(record: dict[str, Any]) -> int:
    """Rows this session has sent to inference (``session.json`` is read back from disk: checked)."""
    used = record.get("inferred_rows", 0)
    if type(used) is not int or used < 0:
        raise SessionError("session.json: inferred_rows must be a non-negative integer")
    return used
