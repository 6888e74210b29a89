"""EarlyStopping's rule, pinned against hand-worked loss sequences (a flipped min_delta sign survived before)."""

from __future__ import annotations

import math

import pytest

from encrypted_torch.training import EarlyStopping


@pytest.mark.parametrize("losses, min_delta, patience, improved, stops", [
    ([1.0, 0.95, 0.94], 0.1, 2, [True, False, False], [False, False, True]),   # 0.05 < min_delta: no improvement
    ([1.0, 0.85, 0.84], 0.1, 2, [True, True, False], [False, False, False]),   # 0.15 > min_delta: improvement
    ([1.0, 1.05, 0.99], 0.0, 2, [True, False, True], [False, False, False]),   # any decrease counts, resets
    ([1.0, 1.0], 0.0, 1, [True, False], [False, True]),                          # equal is not better
    ([1.0, math.nan, math.inf], 0.0, 2, [True, False, False], [False, False, True]),  # non-finite: a bad epoch
])
def test_early_stopping_follows_its_rule(losses, min_delta, patience, improved, stops):
    es = EarlyStopping(patience=patience, min_delta=min_delta)
    got = [es.update(epoch, loss) for epoch, loss in enumerate(losses)]
    assert [g[0] for g in got] == improved and [g[1] for g in got] == stops
    assert es.best_epoch == max(i for i, ok in enumerate(improved) if ok)


def test_early_stopping_state_round_trips():
    es = EarlyStopping(patience=2, min_delta=0.01)
    es.update(0, 1.0)
    es.update(1, 1.2)
    restored = EarlyStopping(patience=9)
    restored.load_state_dict(es.state_dict())
    assert restored.state_dict() == es.state_dict() == {"patience": 2, "min_delta": 0.01, "best": 1.0,
                                                         "best_epoch": 0, "bad_epochs": 1}
    assert restored.update(2, 1.3) == (False, True)  # the restored patience and count decide
