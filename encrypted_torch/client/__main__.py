"""``python -m encrypted_torch.client --server ws://HOST:PORT --workdir DIR [HETAL options]``.

Runs the key owner's side of a HETAL run against a training server: makes keys, encrypts the
training and validation sets, uploads the public context and the data, answers the server's
refreshes and epoch verdicts, downloads the trained model, decrypts it and reports its test
accuracy. Everything it needs to continue is kept in ``--workdir`` (mode 0700, every file 0600:
it holds the secret key and the plaintext test set): run the same command again after a crash
and it resumes the session. ``wss://`` URLs use TLS, verified against ``--cafile`` if given.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from websockets.exceptions import WebSocketException

from ..ckks.secret import SecretContext
from ..errors import EncTorchError
from ..hetal.config import HetalConfig, add_config_arguments, config_from_args
from ..hetal.plaintext import accuracy
from ..hetal.prepare import decrypt_linear, prepare_hetal
from ..storage.atomic import atomic_write_bytes, atomic_write_json
from ..storage.checkpoint import encode_checkpoint, load_checkpoint
from ..storage.dataset import write_dataset
from ..storage.jsonio import loads_strict
from ..training.early_stopping import EarlyStopping
from .key_owner import KeyOwner
from .remote import RemoteSession, token_from_env_or_file


def _prepare(cfg: HetalConfig, workdir: Path, checkpoint_every: int) -> dict[str, Any]:
    prep = prepare_hetal(cfg)
    _private_dir(workdir)
    atomic_write_bytes(workdir / "secret_context.et", prep.secret.to_bytes(), mode=0o600)
    write_dataset(prep.train, workdir / "data" / "train")
    write_dataset(prep.val, workdir / "data" / "val")
    atomic_write_bytes(workdir / "init_model.et", encode_checkpoint({"model": prep.init}, prep.secret.fingerprint))
    xte, yte = prep.test
    np.savez(workdir / "test.npz", x=xte.numpy(), y=yte.numpy())
    record = {"config": cfg.as_dict(), "job": prep.job(checkpoint_every), "in_features": prep.in_features}
    return {"record": record, "owner": prep.key_owner}


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run (or resume) the client; 2 on an encrypted_torch error."""
    ap = argparse.ArgumentParser(prog="python -m encrypted_torch.client", description=__doc__)
    ap.add_argument("--server", required=True, help="ws://HOST:PORT of python -m encrypted_torch.server")
    ap.add_argument("--workdir", type=Path, required=True, help="keys, encrypted data, session state")
    ap.add_argument("--token-file", type=Path, help="file holding the shared token (else $ENCRYPTED_TORCH_TOKEN)")
    ap.add_argument("--cafile", type=Path, help="CA certificate(s) (PEM) that sign a wss:// server's certificate")
    add_config_arguments(ap, default_dataset="digits")
    ap.add_argument("--checkpoint-every", type=int, default=1, help="server checkpoint interval in steps")
    ap.add_argument("--out", type=Path, help="save the decrypted model's state_dict here (torch.save)")
    ap.add_argument("--report", type=Path, help="write the run's summary as JSON here")
    args = ap.parse_args(argv)
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


def _private_dir(path: Path) -> None:
    """``path`` exists with mode 0700 (also a workdir made by an older version)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def _run(args: argparse.Namespace) -> int:
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
        cfg = config_from_args(args)
        prepared = _prepare(cfg, workdir, args.checkpoint_every)
        record, owner, secret = prepared["record"], prepared["owner"], prepared["owner"].secret
        # the validation labels, before the record
        RemoteSession(args.server, token, owner, state_path=state_path, cafile=args.cafile)._save_state()
        atomic_write_json(record_path, record)
    session = RemoteSession(args.server, token, owner, state_path=state_path, cafile=args.cafile,
                            on_progress=lambda p: print(f"epoch {p.epoch + 1} step {p.step + 1}: {p.info}", flush=True))
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
    print(json.dumps({k: report[k] for k in ("session_id", "test_accuracy", "best_epoch", "reconnects")}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
