"""The wire benchmark's measuring (benchmarks/wire_client.py): levels from message headers, steps from the log."""

from __future__ import annotations

import numpy as np

from benchmarks.wire_client import analyse, cipher_levels, message_levels
from encrypted_torch.protocol.ciphers import encode_ciphers
from encrypted_torch.protocol.messages import RefreshRequest
from encrypted_torch.tensor.enctensor import encrypt
from encrypted_torch.testing.contexts import secret_context


def test_levels_come_from_the_header_of_cipher_lists_and_enctensors() -> None:
    ctx = secret_context("test", "plain").public()
    ev = ctx.evaluator
    top = ctx.top_level
    ciphers = [ev.mod_switch(ev.encrypt(np.ones(ctx.slots)), lv) for lv in (0, top - 1, 1)]
    raw = encode_ciphers(ctx, ciphers)
    assert cipher_levels(raw) == [0, top - 1, 1]
    assert message_levels(RefreshRequest(3, raw, "softmax")) == [0, top - 1, 1]
    tensor = encrypt(np.ones((2, 3)), ctx)
    assert cipher_levels(tensor.to_bytes()) == [c.level for c in tensor.ciphers()]
    for other in (b"", b"ETORCH", raw[:20], b"not ours at all", 17):
        assert cipher_levels(other) is None


def _ev(t: float, direction: str, kind: str, nbytes: int, **extra: object) -> dict:
    return {"t": t, "dir": direction, "type": kind, "bytes": nbytes, **extra}


def test_steps_and_epoch_ends_are_cut_at_progress_and_verdict() -> None:
    events = [_ev(0.0, "c2s", "file_begin", 10, target="public_context"),
              _ev(0.1, "c2s", "file_chunk", 1000, target="public_context"),
              _ev(0.2, "c2s", "file_chunk", 300, target="dataset/train/batch0"),
              _ev(0.3, "c2s", "start_training", 50)]
    t = 1.0
    for step in range(3):  # steps of 2 round trips; an epoch end after the second step
        for _ in range(2):
            events += [_ev(t, "s2c", "refresh_request", 100, levels=[0, 0]),
                       _ev(t + 0.25, "c2s", "refresh_reply", 400, levels=[7, 7])]
            t += 1.0
        events.append(_ev(t, "s2c", "progress", 5, info={"seconds": 2.0 + step}))
        t += 0.5
        if step == 1:
            events += [_ev(t, "s2c", "epoch_end_request", 900), _ev(t + 0.1, "c2s", "epoch_verdict", 20)]
            t += 1.0
    out = analyse(events)
    assert out["upload_bytes"] == {"public_context": 1010, "train": 300}
    assert [s["server_seconds"] for s in out["steps"]] == [2.0, 3.0, 4.0]
    assert all(s["c2s_bytes"] == 800 and s["s2c_bytes"] == 205 and s["round_trips"] == 2 for s in out["steps"])
    assert all(s["ciphers_to_client"] == 4 and s["levels_to_server"] == {"7": 4} for s in out["steps"])
    assert [s["key_owner_seconds"] for s in out["steps"]] == [0.5, 0.5, 0.5]
    assert len(out["epoch_ends"]) == 1
    assert (out["epoch_ends"][0]["s2c_bytes"], out["epoch_ends"][0]["c2s_bytes"]) == (900, 20)
    assert out["per_step"]["server_seconds"] == 3.5  # median of steps 2 and 3: step 1 is not averaged
    assert out["mean_step"]["server_seconds"] == 3.5 and out["mean_step"]["c2s_bytes"] == 800
