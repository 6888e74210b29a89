"""``python -m encrypted_torch.client [train] --server ws://HOST:PORT --workdir DIR [--data PATH] [options]``.

Subcommands: ``train`` (the default), ``predict`` (classify new files with the saved, decrypted model;
``client.predict``) and ``infer`` (encrypted inference on the server; ``client.infer``).

``train`` runs the key owner's side of a HETAL run against a training server: makes keys, encrypts the
training and validation sets, uploads the public context and the data, answers the server's
refreshes and epoch verdicts, downloads the trained model, decrypts it and reports its test
accuracy. ``--data`` trains on your own images, texts or features with defaults scaled to them
(printed; each overridable); ``--dry-run`` prints the plan (time, bytes, refreshes, memory) and stops.
The model (``model.pt``) and a report (Markdown, HTML, PNGs) land in ``--output-dir``.
Everything it needs to continue is kept in ``--workdir`` (mode 0700, every file 0600:
it holds the secret key and the plaintext test set): run the same command again after a crash
and it resumes the session. ``wss://`` URLs use TLS, verified against ``--cafile`` if given.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from websockets.exceptions import WebSocketException

from ..ckks.secret import SecretContext
from ..errors import EncTorchError
from ..hetal.config import HetalConfig, add_config_arguments, resolve_config
from ..hetal.estimate import estimate, plan_sizes
from ..hetal.plaintext import accuracy
from ..hetal.prepare import decrypt_linear, prepare_hetal
from ..storage.atomic import atomic_write_bytes, atomic_write_json
from ..storage.checkpoint import encode_checkpoint, load_checkpoint
from ..storage.dataset import write_dataset
from ..storage.jsonio import loads_strict
from ..training.early_stopping import EarlyStopping
from .key_owner import KeyOwner
from .predict import save_model
from .remote import RemoteSession, token_from_env_or_file
from .report import write_report


def _prepare(cfg: HetalConfig, workdir: Path, checkpoint_every: int) -> dict[str, Any]:
    prep = prepare_hetal(cfg, for_upload=True)  # seeded: half the bytes to write and upload
    _private_dir(workdir)
    if getattr(prep, "inference", None) is not None:  # classes, backbone, normalisation: for model.pt
        torch.save(prep.inference, workdir / "inference.pt")
    atomic_write_bytes(workdir / "secret_context.et", prep.secret.to_bytes(), mode=0o600)
    write_dataset(prep.train, workdir / "data" / "train")
    write_dataset(prep.val, workdir / "data" / "val")
    atomic_write_bytes(workdir / "init_model.et", encode_checkpoint({"model": prep.init}, prep.secret.fingerprint))
    xte, yte = prep.test
    np.savez(workdir / "test.npz", x=xte.numpy(), y=yte.numpy())
    record = {"config": cfg.as_dict(), "job": prep.job(checkpoint_every), "in_features": prep.in_features}
    return {"record": record, "owner": prep.key_owner}


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``train`` (default), ``predict`` or ``infer``; 2 on an encrypted_torch error."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "predict":
        from .predict import main as predict_main

        return predict_main(argv[1:])
    if argv and argv[0] == "infer":
        return _infer(argv[1:])
    if argv and argv[0] == "train":
        argv = argv[1:]
    return _train(argv)


def _infer(argv: list[str]) -> int:
    """Encrypted inference: ``client.infer.main`` (its own module, imported only when asked for)."""
    try:
        module = importlib.import_module(".infer", __package__)
    except ModuleNotFoundError as err:
        if err.name != f"{__package__}.infer":
            raise
        print("error: encrypted inference (python -m encrypted_torch.client infer) is not available in this "
              "installation: encrypted_torch.client.infer is missing. Use 'predict' to classify locally with "
              "the decrypted model.", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="et-infer-") as tmp:
        try:
            argv = _raw_inputs_as_features(argv, Path(tmp))
        except EncTorchError as err:
            print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
            return 2
        return int(module.main(argv))


_INFER_VALUE_OPTIONS = {"--server", "--workdir", "--token-file", "--cafile", "--batch-size", "--out"}
_FEATURE_SUFFIXES = {".npz", ".pt"}


def _raw_inputs_as_features(argv: list[str], tmp: Path) -> list[str]:
    """Images (files, folders) or text files among ``infer``'s inputs become feature files of the training's
    backbone (the workdir's inference.pt), so that new raw files go straight to encrypted inference."""
    workdir = next((Path(argv[i + 1]) for i, a in enumerate(argv[:-1]) if a == "--workdir"), None)
    record = workdir / "inference.pt" if workdir is not None else None
    if record is None or not record.exists():
        return argv
    from .predict import backbone_features

    backbone = torch.load(record, map_location="cpu", weights_only=True)["backbone"]
    if backbone.get("kind") not in ("images", "text"):
        return argv
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip or arg.startswith("-"):
            skip = arg in _INFER_VALUE_OPTIONS and not skip
            out.append(arg)
            continue
        path = Path(arg)
        if path.suffix.lower() in _FEATURE_SUFFIXES:
            out.append(arg)
            continue
        x, _ = backbone_features(backbone, [arg])
        target = tmp / f"{i}_{path.stem or 'inputs'}.npz"
        np.savez(target, x=x.numpy())
        print(f"{arg}: {x.shape[0]} sample(s) through {backbone['name']} -> {target.name}", flush=True)
        out.append(str(target))
    return out


def _train(argv: list[str]) -> int:
    """Parse the command line and run (or resume) training; 2 on an encrypted_torch error."""
    ap = argparse.ArgumentParser(prog="python -m encrypted_torch.client", description=__doc__)
    ap.add_argument("--server", help="ws://HOST:PORT of python -m encrypted_torch.server (not needed for --dry-run)")
    ap.add_argument("--workdir", type=Path, help="keys, encrypted data, session state (not needed for --dry-run)")
    ap.add_argument("--token-file", type=Path, help="file holding the shared token (else $ENCRYPTED_TORCH_TOKEN)")
    ap.add_argument("--cafile", type=Path, help="CA certificate(s) (PEM) that sign a wss:// server's certificate")
    add_config_arguments(ap, default_dataset="digits")
    ap.add_argument("--checkpoint-every", type=int, default=1, help="server checkpoint interval in steps")
    ap.add_argument("--out", type=Path, help="save the decrypted model's state_dict here (torch.save)")
    ap.add_argument("--report", type=Path, help="write the run's summary as JSON here")
    ap.add_argument("--output-dir", type=Path,
                    help="model.pt and the report (report.md/.html, PNGs) go here (default: WORKDIR/output)")
    ap.add_argument("--dry-run", action="store_true",
                    help="print the settings and the plan (time, bytes, refreshes, memory) and stop")
    ap.add_argument("--tensorboard", type=Path, help="write TensorBoard event files here (the tensorboard extra)")
    args = ap.parse_args(argv)
    if args.dry_run:
        try:
            return _dry_run(args)
        except EncTorchError as err:
            print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
            return 2
    if args.server is None or args.workdir is None:
        ap.error("--server and --workdir are required (except with --dry-run)")
    old_umask = os.umask(0o077)  # the secret key, the plaintext test set, the model: readable by us only
    try:
        return _run(args)
    except EncTorchError as err:
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    except (OSError, WebSocketException) as err:  # the server is unreachable or refused the connection
        print(f"error: cannot reach {args.server}: {err}", file=sys.stderr)
        return 2
    finally:
        os.umask(old_umask)


def _settings(args: argparse.Namespace) -> tuple[HetalConfig, Any]:
    cfg, summary, explained = resolve_config(args)
    if explained:
        print(explained, flush=True)
    else:
        print(f"HETAL on {cfg.dataset}: preset={cfg.preset} batch={cfg.batch_size} lr={cfg.lr} epochs≤{cfg.epochs} "
              f"patience={cfg.patience} optimizer={cfg.optimizer}", flush=True)
    return cfg, summary


def _dry_run(args: argparse.Namespace) -> int:
    cfg, summary = _settings(args)
    est = estimate(cfg, **plan_sizes(cfg, summary))
    print("plan (dry run: nothing encrypted, nothing sent):")
    print(est.render(), flush=True)
    return 0


def _private_dir(path: Path) -> None:
    """``path`` exists with mode 0700 (also a workdir made by an older version)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def _run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    board = _tensorboard(args.tensorboard)  # a missing extra fails here, before keys are made
    token = token_from_env_or_file(args.token_file)
    workdir: Path = args.workdir
    if workdir.exists():
        _private_dir(workdir)
    record_path = workdir / "client.json"
    state_path = workdir / "session_state.et"
    if record_path.exists():
        record = loads_strict(record_path.read_bytes(), "client record")
        cfg = HetalConfig(**record["config"])
        secret = SecretContext.from_bytes((workdir / "secret_context.et").read_bytes())
        owner = KeyOwner(secret, EarlyStopping(patience=cfg.patience))
        print(f"resuming from {workdir}", flush=True)
    else:
        cfg, scan = _settings(args)
        plan = estimate(cfg, **plan_sizes(cfg, scan))
        prepared = _prepare(cfg, workdir, args.checkpoint_every)
        atomic_write_json(workdir / "estimate.json", plan.as_dict())
        record, owner, secret = prepared["record"], prepared["owner"], prepared["owner"].secret
        # the validation labels, before the record
        RemoteSession(args.server, token, owner, state_path=state_path, cafile=args.cafile)._save_state()
        atomic_write_json(record_path, record)
    step_seconds: list[float] = []

    def on_progress(p: Any) -> None:
        print(f"epoch {p.epoch + 1} step {p.step + 1}: {p.info}", flush=True)
        step_seconds.append(float(p.info.get("seconds", 0.0)))
        if board is not None:
            board.log_step(int(p.info.get("steps_done", len(step_seconds))), p.info)
            board.log_validation(owner.history)  # the key owner's own numbers, as each epoch is judged

    session = RemoteSession(args.server, token, owner, state_path=state_path, cafile=args.cafile,
                            on_progress=on_progress)
    status = session.connect()
    print(f"session {session.session_id} ({status['stage']})", flush=True)
    session.upload(workdir / "data" / "train", workdir / "data" / "val")
    init = load_checkpoint(workdir / "init_model.et", secret.public())["model"]
    summary = session.train(record["job"], init)
    model = decrypt_linear(session.fetch_model(), secret, record["in_features"])
    session.close()
    test = np.load(workdir / "test.npz")
    acc = accuracy(model, torch.from_numpy(test["x"]), torch.from_numpy(test["y"]))
    if args.out:
        torch.save({"weight": model.weight.detach(), "bias": model.bias.detach()}, args.out)
    report = {"session_id": session.session_id, "server": summary, "test_accuracy": acc,
              "best_epoch": owner.best_epoch, "history": owner.history, "reconnects": session.reconnects,
              "refreshed_ciphertexts": session.refreshed_ciphers}
    if args.report:
        atomic_write_json(args.report, report)
    if board is not None:
        board.log_validation(owner.history)
        board.close()
    out_dir = args.output_dir or workdir / "output"
    if (workdir / "inference.pt").exists():
        _write_outputs(out_dir, workdir, cfg, model, test, owner, summary, step_seconds,
                       time.perf_counter() - started)
        print(f"model: {out_dir / 'model.pt'}  report: {out_dir / 'report.md'}", flush=True)
    print(json.dumps({k: report[k] for k in ("session_id", "test_accuracy", "best_epoch", "reconnects")}), flush=True)
    return 0


def _tensorboard(logdir: Path | None) -> Any:
    if logdir is None:
        return None
    from ..training.tensorboard import TensorBoardLogger

    return TensorBoardLogger(logdir)


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _write_outputs(out: Path, workdir: Path, cfg: HetalConfig, model: torch.nn.Linear, test: Any, owner: KeyOwner,
                   summary: dict[str, Any], step_seconds: list[float], seconds: float) -> None:
    """model.pt (the torch way, with classes, backbone and normalisation) and the report beside it."""
    inference = torch.load(workdir / "inference.pt", map_location="cpu", weights_only=True)
    out.mkdir(parents=True, exist_ok=True)
    save_model(out / "model.pt", model, inference)
    x, y = torch.from_numpy(test["x"]), torch.from_numpy(test["y"])
    with torch.no_grad():
        pred = model(x.to(model.weight.dtype)).argmax(1)
    est_path = workdir / "estimate.json"
    est = loads_strict(est_path.read_bytes(), "estimate") if est_path.exists() else None
    upload = _dir_bytes(workdir / "data") + len(owner.secret.public_bytes())
    steps = summary.get("steps") or len(step_seconds)
    measured = {"epochs_run": summary.get("epochs_run"), "best_epoch": owner.best_epoch + 1, "steps": steps,
                "step_seconds": summary.get("seconds_per_step"), "total_seconds": round(seconds, 1),
                "refreshes_per_step": summary.get("refreshes_per_step"), "upload_bytes": upload,
                "bytes_received": summary.get("bytes_sent"),
                "client_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "server_peak_mb": summary.get("peak_rss_mb")}
    settings = {k: v for k, v in cfg.as_dict().items() if v is not None}
    settings.update({f"split_{k}": v for k, v in inference.get("splits", {}).items()})
    settings["backbone"] = inference["backbone"].get("name")
    notes = [f"{inference['skipped']} unreadable file(s) were skipped"] if inference.get("skipped") else []
    if est is not None:
        notes.append("total time: the estimate counts every epoch up to the cap; early stopping may end sooner, "
                     "and the measurement includes feature extraction only if the cache was cold")
    write_report(out, title=f"HETAL on {Path(cfg.data).name if cfg.data else cfg.dataset}",
                 classes=list(inference["classes"]), y_true=y, y_pred=pred, history=owner.history,
                 step_seconds=step_seconds, settings=settings, measured=measured, estimate=est, notes=notes)


if __name__ == "__main__":
    sys.exit(main())
