"""features.extract: batching, eval/no-grad semantics, and the fingerprinted on-disk cache."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from encrypted_torch.features import extract, fingerprint


class Counting(nn.Module):
    """Linear map that counts how many items it has seen, to detect (re)computation."""

    def __init__(self, d_in: int = 4, d_out: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(d_in, d_out)
        self.seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += x.shape[0]
        return self.lin(x)


class Pair(nn.Module):
    """Returns a tuple, which extract must refuse."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x


class Items(Dataset):
    """Map-style dataset of single tensors."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[i]


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(10, 4, generator=torch.Generator().manual_seed(1))


def test_matches_direct_call(x):
    model = Counting()
    out = extract(model, x, batch_size=3, progress=False)
    with torch.no_grad():
        expected = model.lin(x)
    assert out.shape == (10, 3) and out.dtype == torch.float32
    assert not out.requires_grad
    torch.testing.assert_close(out, expected)
    assert model.seen == 10


@pytest.mark.parametrize("wrap", [list, Items])
def test_sequence_and_dataset_inputs(x, wrap):
    model = Counting()
    expected = extract(model, x, progress=False)
    torch.testing.assert_close(extract(model, wrap(x), batch_size=4, progress=False), expected)


def test_flattens_and_casts_to_float32():
    model = nn.Sequential(nn.Linear(4, 6).double(), nn.Unflatten(1, (2, 3)))
    out = extract(model, torch.randn(5, 4, dtype=torch.float64), batch_size=2, progress=False)
    assert out.shape == (5, 6) and out.dtype == torch.float32


def test_runs_in_eval_mode_and_restores_training(x):
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.9))
    model.train()
    a = extract(model, x, progress=False)
    b = extract(model, x, progress=False)
    torch.testing.assert_close(a, b)  # dropout off
    assert model.training


def test_cache_hit_reuses_file_without_recompute(x, tmp_path):
    cache = tmp_path / "sub" / "feats.pt"
    model = Counting()
    first = extract(model, x, cache=cache, progress=False)
    assert cache.is_file() and model.seen == 10
    mtime = cache.stat().st_mtime_ns
    second = extract(model, x, cache=str(cache), progress=False)
    assert model.seen == 10
    assert cache.stat().st_mtime_ns == mtime
    torch.testing.assert_close(first, second)
    assert sorted(p.name for p in cache.parent.iterdir()) == ["feats.pt"]  # no temp files left


def test_cache_invalidated_when_inputs_change(x, tmp_path):
    cache = tmp_path / "feats.pt"
    model = Counting()
    extract(model, x, cache=cache, progress=False)
    changed = x.clone()
    changed[3, 1] += 1.0
    out = extract(model, changed, cache=cache, progress=False)
    assert model.seen == 20
    torch.testing.assert_close(out, model.lin(changed).detach())
    extract(model, x[:7], cache=cache, progress=False)  # shape change
    assert model.seen == 27
    extract(model, x[:7], cache=cache, progress=False)  # the file now holds the latest run
    assert model.seen == 27


def test_cache_invalidated_when_weights_change(x, tmp_path):
    cache = tmp_path / "feats.pt"
    model = Counting()
    extract(model, x, cache=cache, progress=False)
    with torch.no_grad():
        model.lin.bias.add_(1.0)
    out = extract(model, x, cache=cache, progress=False)
    assert model.seen == 20
    torch.testing.assert_close(out, model.lin(x).detach())


def test_corrupt_cache_is_recomputed(x, tmp_path):
    cache = tmp_path / "feats.pt"
    cache.write_bytes(b"not a torch file")
    model = Counting()
    with pytest.warns(UserWarning, match="unreadable feature cache"):
        extract(model, x, cache=cache, progress=False)
    assert model.seen == 10
    extract(model, x, cache=cache, progress=False)
    assert model.seen == 10


def test_fingerprint_sensitivity(x):
    model = Counting()
    base = fingerprint(model, x)
    assert fingerprint(model, list(x)) == base
    assert fingerprint(model, x.double()) != base
    assert fingerprint(model, x.reshape(10, 2, 2)) != base
    assert fingerprint(Counting(d_out=2), x) != base


def test_no_progress_output_when_not_a_tty(x, capsys):
    extract(Counting(), x, progress=True)
    assert capsys.readouterr().err == ""


def test_errors(x):
    model = Counting()
    with pytest.raises(ValueError, match="empty"):
        extract(model, x[:0])
    with pytest.raises(ValueError, match="batch_size"):
        extract(model, x, batch_size=0)
    with pytest.raises(ValueError, match="do not stack"):
        extract(model, [torch.zeros(4), torch.zeros(5)], progress=False)
    with pytest.raises(TypeError, match="sized"):
        extract(model, iter([x[0]]))
    with pytest.raises(ValueError, match="batch dimension"):
        extract(nn.Flatten(0), x, progress=False)
    with pytest.raises(TypeError, match="must return a Tensor"):
        extract(Pair(), x, progress=False)
