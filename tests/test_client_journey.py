"""The client's journey on its own data (#15): dry run, train against a real server, model.pt, predict, report.

The server runs in this process on loopback with the plaintext backend (``allow_plain``): the point is the
journey, not SEAL (tutorial 07 and the closing note of #15 run it on SEAL). One training run serves the
module; the tests read what it wrote.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import encrypted_torch.client.__main__ as client_main
from encrypted_torch.client.predict import Classifier, save_model
from encrypted_torch.datasets.own_data import load_own_data
from encrypted_torch.hetal.estimate import estimate, plan_sizes
from encrypted_torch.server import ServerConfig, TrainingServer

sklearn = pytest.importorskip("sklearn", reason="the data are scikit-learn's digits")
TOKEN = "journey-token-" + "0" * 24
SETTINGS = ["--backend", "plain", "--preset", "fast", "--epochs", "2", "--seed", "1"]


def digits_npz(path: Path, classes: int = 3, per_class: int = 40) -> Path:
    """scikit-learn's digits as precomputed features (64 pixels), ``classes`` classes."""
    from sklearn.datasets import load_digits

    d = load_digits()
    keep = np.concatenate([np.flatnonzero(d.target == c)[:per_class] for c in range(classes)])
    np.savez(path, features=d.data[keep].astype(np.float32), labels=d.target[keep].astype(str))
    return path


@pytest.fixture(scope="module")
def journey(tmp_path_factory):
    """One trained client run: its data, workdir, output folder, stdout, TensorBoard folder (or None)."""
    tmp = tmp_path_factory.mktemp("journey")
    data = digits_npz(tmp / "digits.npz")
    board = tmp / "tb" if _has_tensorboard() else None
    mp = pytest.MonkeyPatch()
    mp.setenv("ENCRYPTED_TORCH_TOKEN", TOKEN)
    srv = TrainingServer(ServerConfig(tmp / "server", TOKEN.encode(), allow_plain=True))
    port = srv.start()
    try:
        argv = ["--server", f"ws://127.0.0.1:{port}", "--workdir", str(tmp / "client"), "--data", str(data),
                "--output-dir", str(tmp / "out"), *SETTINGS] + (["--tensorboard", str(board)] if board else [])
        rc = client_main.main(argv)
    finally:
        srv.shutdown()
        mp.undo()
    assert rc == 0
    return {"data": data, "work": tmp / "client", "out": tmp / "out", "board": board, "tmp": tmp}


def _has_tensorboard() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def test_training_writes_the_model_and_the_report(journey):
    out = journey["out"]
    expected = {"model.pt", "report.md", "report.html", "report.json"}
    if _has("matplotlib"):
        expected |= {"confusion.png", "curves.png"}
    assert expected <= {p.name for p in out.iterdir()}
    report = json.loads((out / "report.json").read_text())
    md = (out / "report.md").read_text()
    assert f"| test accuracy (encrypted training) | {report['test_accuracy']:.4f} on 24 samples |" in md
    assert report["classes"] == ["0", "1", "2"] and len(report["per_class_accuracy"]) == 3
    assert sum(map(sum, report["confusion_matrix"])) == 24
    assert [h["epoch"] for h in report["history"]] == [0, 1]
    assert report["settings"]["split_seed"] == 1 and report["settings"]["split_train"] == 84
    assert "<table>" in (out / "report.html").read_text()


def test_the_saved_model_reproduces_the_reported_test_accuracy(journey):
    """model.pt is a torch.save of the state_dict with classes, backbone and normalisation; applied to the raw
    test features (split again with the recorded seed) it gives the report's confusion matrix."""
    blob = torch.load(journey["out"] / "model.pt", weights_only=True)
    assert set(blob["state_dict"]) == {"weight", "bias"} and blob["classes"] == ["0", "1", "2"]
    assert blob["backbone"] == {"kind": "features", "name": None, "num_features": 64}
    clf = Classifier.load(journey["out"] / "model.pt")
    own = load_own_data(journey["data"], seed=1, progress=False)
    x, y = own.splits.test
    pred = clf.predict_proba(x).argmax(1)
    report = json.loads((journey["out"] / "report.json").read_text())
    m = torch.zeros(3, 3, dtype=torch.int64)
    for t, p in zip(y.tolist(), pred.tolist(), strict=True):
        m[t, p] += 1
    assert m.tolist() == report["confusion_matrix"]
    assert report["test_accuracy"] > 0.8  # three digit classes from raw pixels


def test_predict_cli_classifies_new_files(journey, capsys, tmp_path):
    from sklearn.datasets import load_digits

    d = load_digits()
    new = np.concatenate([np.flatnonzero(d.target == c)[100:110] for c in range(3)])
    np.savez(tmp_path / "new.npz", features=d.data[new].astype(np.float32))
    assert client_main.main(["predict", "--model", str(journey["out"] / "model.pt"), str(tmp_path / "new.npz")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "input,label,probability" and len(lines) == 31
    labels = [line.split(",")[1] for line in lines[1:]]
    truth = [str(t) for t in d.target[new]]
    assert sum(a == b for a, b in zip(labels, truth, strict=True)) >= 24


def test_predict_refuses_a_file_that_is_not_a_model(tmp_path, capsys):
    (tmp_path / "m.pt").write_bytes(b"not a model")
    assert client_main.main(["predict", "--model", str(tmp_path / "m.pt"), "x.npz"]) == 2
    assert "is not a saved encrypted_torch model" in capsys.readouterr().err


def test_the_dry_run_plans_exactly_the_refreshes_the_run_measured(journey, capsys, tmp_path):
    """Counts are exact (the dry run is the training code on null ciphers); time and bytes are models."""
    argv = ["--dry-run", "--data", str(journey["data"]), *SETTINGS]
    assert client_main.main(argv) == 0
    out = capsys.readouterr().out
    assert "plan (dry run: nothing encrypted, nothing sent)" in out and "refreshes" in out and "peak memory" in out
    report = json.loads((journey["out"] / "report.json").read_text())
    assert report["estimate"]["refreshes_per_step"] == report["measured"]["refreshes_per_step"]
    est, measured = report["estimate"]["upload_bytes"], report["measured"]["upload_bytes"]
    assert 0.5 < measured / est < 2.0, (measured, est)
    n = f"{report['measured']['refreshes_per_step']:.4g}"
    assert f"| refreshes per step | {n} | {n} | 1.00 |" in (journey["out"] / "report.md").read_text()


def test_the_dry_run_needs_no_server_and_writes_nothing(tmp_path, capsys):
    data = digits_npz(tmp_path / "d.npz")
    assert client_main.main(["--dry-run", "--data", str(data), "--workdir", str(tmp_path / "w"), *SETTINGS]) == 0
    assert not (tmp_path / "w").exists()
    with pytest.raises(SystemExit):
        client_main.main(["--data", str(data)])  # a real run needs --server and --workdir
    assert "--server and --workdir are required" in capsys.readouterr().err


def test_a_bad_input_stops_the_cli_before_any_key_is_made(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ENCRYPTED_TORCH_TOKEN", TOKEN)
    np.savez(tmp_path / "one.npz", features=np.zeros((9, 2)), labels=np.zeros(9))
    rc = client_main.main(["--server", "ws://127.0.0.1:9", "--workdir", str(tmp_path / "w"),
                           "--data", str(tmp_path / "one.npz")])
    assert rc == 2 and "SingleClassError" in capsys.readouterr().err
    assert not (tmp_path / "w" / "secret_context.et").exists()


def test_estimate_counts_match_a_real_plaintext_run():
    """The dry run's op counts per step equal a step on the plaintext backend's (which equal SEAL's)."""
    from encrypted_torch.hetal.config import HetalConfig
    from encrypted_torch.hetal.estimate import dry_counts
    from encrypted_torch.hetal.prepare import prepare_hetal, train_in_process

    cfg = HetalConfig(dataset="digits", preset="test", backend="plain", batch_size=128, epochs=1, max_steps=2)
    prep = prepare_hetal(cfg)
    _, fit = train_in_process(prep)
    steps, _ = dry_counts(cfg, prep.in_features, prep.num_classes, [128], prep.train.unit, steps=2)
    for real, dry in zip(fit.steps, steps, strict=True):
        assert real.ops["refreshes"] == dry.refreshes and real.ops["rotations"] == dry.rotations
        assert real.ops["ct_ct_mults"] == dry.ct_ct_mults


def test_estimate_of_a_builtin_dataset_renders_every_quantity():
    from encrypted_torch.hetal.config import config_for

    cfg = config_for("digits", preset="test", backend="plain")
    est = estimate(cfg, **plan_sizes(cfg))
    text = est.render()
    for word in ("time per step", "total", "upload", "per step", "refreshes", "client", "server"):
        assert word in text
    assert est.steps_per_epoch == 5 and est.total_seconds > est.setup_seconds > 0


def test_infer_is_dispatched_to_its_module(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "encrypted_torch.client.infer", None)  # as if the module were missing
    assert client_main.main(["infer", "--server", "ws://x", "f.npz"]) == 2
    assert "encrypted_torch.client.infer is missing" in capsys.readouterr().err


def test_tensorboard_holds_the_key_owners_validation_and_the_servers_steps(journey):
    pytest.importorskip("tensorboard", reason="the tensorboard extra")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(journey["board"]))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"step/seconds", "step/refreshes", "step/weight_level", "validation/loss", "validation/accuracy"} <= tags
    report = json.loads((journey["out"] / "report.json").read_text())
    assert [e.value for e in acc.Scalars("validation/accuracy")] == pytest.approx(
        [h["val_acc"] for h in report["history"]])
    assert [e.value for e in acc.Scalars("step/refreshes")] == [report["measured"]["refreshes_per_step"]] * 4


def test_hetal_cli_trains_on_own_data_and_reports_the_plaintext_twin(tmp_path, capsys):
    from encrypted_torch.hetal.__main__ import main as hetal_main

    data = digits_npz(tmp_path / "d.npz")
    rc = hetal_main(["--data", str(data), "--output-dir", str(tmp_path / "out"), "--no-progress", *SETTINGS])
    assert rc == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["plain_test_accuracy"] is not None
    assert abs(report["test_accuracy"] - report["plain_test_accuracy"]) <= 1 / 24 + 1e-9  # at most one sample apart
    assert "test accuracy (plaintext twin)" in (tmp_path / "out" / "report.md").read_text()
    assert Classifier.load(tmp_path / "out" / "model.pt").classes == ["0", "1", "2"]


def test_an_image_model_classifies_image_files(tmp_path, capsys):
    """predict runs the saved backbone on new image files; the answer is softmax(W·norm(features) + b)."""
    pytest.importorskip("efficientnet_lite_pytorch", reason="image features need the vision extra")
    from test_own_data import digits_folder

    from encrypted_torch.datasets.own_data import image_features, load_images

    root = digits_folder(tmp_path / "imgs", per_class=2)
    g = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(1280, 3, dtype=torch.float64)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(3, 1280, generator=g, dtype=torch.float64))
    mean, std = torch.zeros(1280, dtype=torch.float64), torch.ones(1280, dtype=torch.float64)
    inference = {"classes": ["a", "b", "c"], "backbone": {"kind": "images", "name": "efficientnet-lite0",
                                                          "image_size": 32},
                 "normalisation": {"mean": mean, "std": std}}
    save_model(tmp_path / "model.pt", linear, inference)
    assert client_main.main(["predict", "--model", str(tmp_path / "model.pt"), str(root), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    files = sorted(str(p) for p in root.rglob("*.png"))
    assert [r["input"] for r in rows] == files
    feats = image_features(load_images(files, 32)[0], 32, progress=False).double()
    z = feats / feats.norm(dim=1, keepdim=True)
    expect = torch.softmax(linear(z), 1).detach()
    assert [r["label"] for r in rows] == [["a", "b", "c"][i] for i in expect.argmax(1).tolist()]
    assert [r["probability"] for r in rows] == pytest.approx(expect.max(1).values.tolist(), abs=1e-4)


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_three_commands_on_an_image_folder_infer_agrees_with_predict(tmp_path, capsys, monkeypatch):
    """The README's journey: a server, the client trains on a folder of PNGs, then classifies new PNG files by
    encrypted inference; the encrypted answers equal the saved model's local ones (predict)."""
    pytest.importorskip("efficientnet_lite_pytorch", reason="image features need the vision extra")
    from test_own_data import digits_folder

    root = digits_folder(tmp_path / "imgs", per_class=10)
    new = tmp_path / "new"
    new.mkdir()
    for i, f in enumerate(sorted((root / "1").glob("*.png"))[:3] + sorted((root / "2").glob("*.png"))[:3]):
        f.rename(new / f"{i}.png")  # held out: never trained on
    monkeypatch.setenv("ENCRYPTED_TORCH_TOKEN", TOKEN)
    srv = TrainingServer(ServerConfig(tmp_path / "server", TOKEN.encode(), allow_plain=True))
    port = srv.start()
    url, work = f"ws://127.0.0.1:{port}", str(tmp_path / "work")
    try:
        assert client_main.main(["--server", url, "--workdir", work, "--data", str(root), "--image-size", "32",
                                 "--cache-dir", str(tmp_path / "cache"), "--backend", "plain", "--epochs", "2"]) == 0
        capsys.readouterr()
        assert client_main.main(["infer", "--server", url, "--workdir", work, "--out", str(tmp_path / "inf.json"),
                                 str(new)]) == 0
    finally:
        srv.shutdown()
    assert "6 sample(s) through efficientnet-lite0" in capsys.readouterr().out
    encrypted = json.loads((tmp_path / "inf.json").read_text())["results"][0]["classes"]
    assert client_main.main(["predict", "--model", f"{work}/output/model.pt", "--json", str(new)]) == 0
    local = [json.loads(line)["label"] for line in capsys.readouterr().out.splitlines()]
    assert encrypted == local and len(local) == 6


def test_tensorboard_callback_on_the_trainer(tmp_path):
    """In process, the Trainer's callback writes the steps, and the key owner's validation after each epoch."""
    pytest.importorskip("tensorboard", reason="the tensorboard extra")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from encrypted_torch.hetal.config import HetalConfig
    from encrypted_torch.hetal.prepare import prepare_hetal
    from encrypted_torch.storage.dataset import StreamingLoader
    from encrypted_torch.training.job import build_hetal_linear, validate_job
    from encrypted_torch.training.tensorboard import TensorBoardCallback, TensorBoardLogger
    from encrypted_torch.training.trainer import Trainer

    cfg = HetalConfig(dataset="digits", preset="test", backend="plain", batch_size=256, epochs=2, max_steps=2)
    prep = prepare_hetal(cfg)
    job = validate_job(prep.job(), {"hetal-linear": build_hetal_linear})
    model, opt, criterion = build_hetal_linear(prep.key_owner.public_context, job, prep.init, prep.train.unit)
    logger = TensorBoardLogger(tmp_path / "tb")
    loader = StreamingLoader(prep.train, shuffle=True, seed=0, max_steps=2)
    result = Trainer(model, opt, prep.key_owner, criterion, progress=False,
                     callbacks=[TensorBoardCallback(logger, prep.key_owner)]).fit(loader, prep.val, 2)
    logger.close()
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert [e.value for e in acc.Scalars("step/refreshes")] == [float(s.ops["refreshes"]) for s in result.steps]
    assert [e.step for e in acc.Scalars("validation/loss")] == [1, 2]
    assert [e.value for e in acc.Scalars("validation/loss")] == pytest.approx(
        [h["val_loss"] for h in prep.key_owner.history])
