"""The key owner as the server sees it across the network, and the server's trainer callbacks."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, TypeVar

from ..ckks import counters
from ..ckks.evaluator import Cipher
from ..data.dataset import KeptLabels
from ..protocol.channel import Channel
from ..protocol.ciphers import check_fresh, decode_ciphers, decode_tensors, encode_ciphers, encode_tensors
from ..protocol.errors import ProtocolError, SessionError
from ..protocol.messages import (
    BestStateReply,
    BestStateRequest,
    EpochEndRequest,
    EpochVerdictReply,
    Message,
    Progress,
    RefreshReply,
    RefreshRequest,
    SoftmaxGradReply,
    SoftmaxGradRequest,
)
from ..protocol.wire import wire_cuts
from ..tensor.enctensor import EncTensor
from ..training.key_owner_link import EpochVerdict

R = TypeVar("R", bound=Message)


class NetworkKeyOwner:
    """``training.KeyOwnerLink`` over a Channel: each call is one request and its reply.

    Replies are checked before the trainer sees them: request id, key, counts, layouts, and
    that refreshed ciphertexts are fresh (top level, or the level asked for with ``trim``, which
    also sends every refresh request at level 0).
    """

    def __init__(self, channel: Channel, ctx: Any, reply_timeout: float | None = 600.0) -> None:
        self.channel, self.ctx, self.reply_timeout = channel, ctx, reply_timeout
        self._ids = itertools.count()
        self.round_trips = 0
        self.trim = "trim" in wire_cuts()

    def _asked_level(self, level: int | None) -> int:
        """The level to ask a reply at: the consumer's when trimming, else the top (-1 on the wire)."""
        return level if (self.trim and level is not None) else -1

    def _lowest(self, t: EncTensor) -> EncTensor:
        """``t`` at level 0 when trimming: the key owner only decrypts what it is sent, and the same
        values take fewer bytes with fewer primes."""
        return t.mod_switch_to(0) if self.trim else t

    def refresh(self, ciphers: Sequence[Cipher], stage: str = "", level: int | None = None) -> list[Cipher]:
        rid, ask = next(self._ids), self._asked_level(level)
        # trimming, a request goes at level 0: the key owner decrypts the same values from fewer bytes
        sent = [self.ctx.evaluator.mod_switch(c, 0) for c in ciphers] if self.trim else ciphers
        self.channel.send(RefreshRequest(rid, encode_ciphers(self.ctx, sent), stage, ask))
        reply = self._reply(RefreshReply, rid)
        fresh = decode_ciphers(reply.ciphers, self.ctx, expected=len(ciphers))
        check_fresh(fresh, self.ctx.top_level if ask < 0 else ask)
        for c in ciphers:  # in one process SecretContext.refresh counts them
            counters.record("refreshes", level=c.level)
        return fresh

    def softmax_gradient(self, logits: EncTensor, labels: KeptLabels, level: int | None = None) -> EncTensor:
        """The key owner's fresh (softmax(z) − Y)/rows for a training batch's logits (exact-softmax jobs)."""
        rid, ask = next(self._ids), self._asked_level(level)
        self.channel.send(SoftmaxGradRequest(rid, labels.dataset, labels.index, labels.rows,
                                             self._lowest(logits).to_bytes(), ask))
        reply = self._reply(SoftmaxGradReply, rid)
        blocks = decode_ciphers(reply.grad, self.ctx, expected=len(logits.ciphers()))
        check_fresh(blocks, self.ctx.top_level if ask < 0 else ask)
        n_b = logits.layout.grid[1]
        return EncTensor([blocks[i : i + n_b] for i in range(0, len(blocks), n_b)], logits.layout, self.ctx)

    def end_epoch(self, epoch: int, dataset: str, val_logits: list[EncTensor],
                  state: dict[str, EncTensor]) -> EpochVerdict:
        rid = next(self._ids)
        self.channel.send(EpochEndRequest(rid, epoch, dataset, [self._lowest(t).to_bytes() for t in val_logits],
                                          encode_tensors({k: self._lowest(v) for k, v in state.items()})))
        reply = self._reply(EpochVerdictReply, rid)
        return EpochVerdict(decode_tensors(reply.refreshed, self.ctx, like=state), reply.stop)

    def best_state(self) -> dict[str, EncTensor]:
        rid = next(self._ids)
        self.channel.send(BestStateRequest(rid))
        return decode_tensors(self._reply(BestStateReply, rid).state, self.ctx)

    def _reply(self, cls: type[R], rid: int) -> R:
        msg = self.channel.expect(cls, self.reply_timeout)
        if msg.request_id != rid:  # type: ignore[attr-defined]
            raise ProtocolError(f"reply to request {msg.request_id} while {rid} is open")  # type: ignore[attr-defined]
        self.round_trips += 1
        return msg


class ProgressReporter:
    """Tells the client after every step where training is (no reply expected)."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    def on_step_end(self, trainer: Any, epoch: int, step: int) -> None:
        rec = trainer.result.steps[-1]
        info = {"steps_done": len(trainer.result.steps), "seconds": round(rec.seconds, 4),
                "refreshes": rec.ops.get("refreshes", 0), "weight_level": rec.weight_level}
        self.channel.send(Progress(epoch, step, info))


class Superseded:
    """Stops a training run whose session was taken over by a newer connection (a reconnect)."""

    def __init__(self, session: Any, generation: int) -> None:
        self.session, self.generation = session, generation

    def _check(self) -> None:
        if self.session.generation != self.generation:
            raise SessionError("a newer connection took over this session")

    def on_step_end(self, trainer: Any, epoch: int, step: int) -> None:
        self._check()

    def on_epoch_end(self, trainer: Any, epoch: int) -> None:
        self._check()
