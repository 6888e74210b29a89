"""Encrypted inference as a service: a finished session's trained model applied to a client's ciphertexts.

The client sends its samples' features encrypted under its own key (``InferRequest``); the server
runs the job's model forward on them (for ``hetal-linear``: x Wᵀ + b, one DiagABT product) and sends
the encrypted logits back (``InferReply``). Only the key owner can decrypt either, so the server
learns the row count and the timing, nothing else; the key owner answers nothing new (no refresh,
no verdict), so inference opens no oracle on the client's side.

Depth: the stored model is the key owner's fresh encryption of the best epoch's weights (the
trainer loads ``best_state()`` when training ends), at the top level, and the client encrypts its
features afresh; a product of two top-level operands fits every preset, so no refresh is ever
needed. Both are checked here, before any product, with an error naming the fix.
"""

from __future__ import annotations

from typing import Any

from ..autograd import no_grad
from ..errors import EncTorchError, ShapeError
from ..protocol.channel import Channel
from ..protocol.errors import ProtocolError, SessionError
from ..protocol.messages import InferReply, InferRequest
from ..storage.checkpoint import load_checkpoint
from ..storage.jsonio import loads_strict
from ..tensor.enctensor import EncTensor
from ..tensor.layout import BlockLayout
from .job import validate_job
from .limits import cipher_bytes

FRAMING_BYTES = 64 << 10  # an EncTensor's metadata and section headers, beyond its ciphertexts


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
        self._cipher_bytes = 0
        self.requests = 0

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
        self.requests += 1
        channel.send(InferReply(msg.request_id, msg.rows, logits.to_bytes()))

    def _features(self, msg: InferRequest, ctx: Any) -> EncTensor:
        """The request's EncTensor, its size bounded by the rows it declares before it is parsed."""
        layout = BlockLayout((msg.rows, self._in_features), self._unit, "grid")
        n_a, n_b = layout.grid
        bound = n_a * n_b * (2 * self._cipher_bytes + 1024) + FRAMING_BYTES
        if len(msg.x) > bound:
            raise ProtocolError(f"infer_request: {len(msg.x)} bytes for {msg.rows} rows × {self._in_features} "
                                f"features, over the {bound} bytes their {n_a * n_b} blocks can need")
        x = EncTensor.from_bytes(msg.x, ctx)  # ContextMismatchError for another key's ciphertexts
        if x.layout != layout:
            raise ShapeError(f"infer_request: features arrived as {x.layout.describe()}; this model reads "
                             f"{layout.describe()} (rows × in_features in the training data's block shape)")
        if x.level < ctx.top_level:
            raise ProtocolError(f"infer_request: features at level {x.level}, below the top level {ctx.top_level}; "
                                "encrypt them afresh (the product needs a fresh operand)")
        return x

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
        units = {tuple(t.layout.unit) for t in state.values()}
        if len(units) != 1:
            raise SessionError(f"the stored final model mixes block shapes {sorted(units)}")
        low = {k: t.level for k, t in state.items() if t.level < ctx.top_level}
        if low:
            raise SessionError(f"the stored model's {sorted(low)} are at level(s) {sorted(set(low.values()))}, below "
                               f"the top level {ctx.top_level}: it is not the key owner's fresh best state, so a "
                               "product could run out of levels; train again with this server version")
        self._unit = units.pop()
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
