"""``python -m encrypted_torch.hetal --dataset digits|mnist|snips`` or ``--data PATH``: a whole HETAL run, reported.

``--data`` takes your own image folder, CSV/JSONL of texts or features (``datasets.own_data``), with
defaults scaled to it (printed, each overridable). ``--dry-run`` prints the plan and stops;
``--output-dir`` receives the decrypted model (``model.pt``) and the report (with the plaintext twin).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

from ..executors import cli as executor_cli
from .config import add_config_arguments, resolve_config
from .estimate import estimate, plan_sizes
from .pipeline import run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m encrypted_torch.hetal", description=__doc__)
    add_config_arguments(ap, default_dataset="mnist")
    ap.add_argument("--json", type=Path, help="also write the report as JSON here")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--dry-run", action="store_true", help="print the settings and the plan, then stop")
    ap.add_argument("--output-dir", type=Path, help="write model.pt and the report (Markdown, HTML, PNGs) here")
    ap.add_argument("--tensorboard", type=Path, help="write TensorBoard event files here (the tensorboard extra)")
    args = executor_cli.parse_args(ap, argv)  # adds and applies --executor, --ray-address
    from ..errors import EncTorchError

    try:
        return _main(args)
    except EncTorchError as err:
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    cfg, scan, explained = resolve_config(args)
    if explained:
        print(explained, flush=True)
    else:
        print(f"HETAL on {cfg.dataset}: preset={cfg.preset} batch={cfg.batch_size} lr={cfg.lr} "
              f"epochs≤{cfg.epochs} patience={cfg.patience} optimizer={cfg.optimizer}", flush=True)
    plan = estimate(cfg, **plan_sizes(cfg, scan)) if (args.dry_run or args.output_dir) else None
    if args.dry_run:
        print("plan (dry run: nothing encrypted):")
        print(plan.render(), flush=True)
        return 0
    board = None
    if args.tensorboard is not None:
        from ..training.tensorboard import TensorBoardLogger

        board = TensorBoardLogger(args.tensorboard)
    own = None
    if cfg.dataset == "own":
        from .prepare import load_own

        own = load_own(cfg, progress=not args.no_progress)
    report = run(cfg, progress=not args.no_progress, splits=own.splits if own is not None else None)
    summary = report.summary()
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        print(f"{key:<{width}}  {value}")
    for row in report.client_history:
        print(f"  epoch {row['epoch'] + 1}: val_loss={row['val_loss']:.4f} val_acc={row['val_acc']:.4f}"
              f"{'  *best so far' if row['improved'] else ''}")
    if board is not None:  # after the run: the in-process trainer takes no callbacks from here
        for i, step in enumerate(report.enc.steps, start=1):
            board.log_step(i, {"seconds": step.seconds, "refreshes": step.ops["refreshes"],
                               "weight_level": step.weight_level})
        board.log_validation(report.client_history)
        board.close()
    if args.json:
        args.json.write_text(json.dumps({"config": cfg.as_dict(), "summary": summary,
                                         "client_history": report.client_history}, indent=2))
    if args.output_dir is not None:
        _write_outputs(args.output_dir, cfg, report, own, plan, time.perf_counter() - started)
        print(f"model: {args.output_dir / 'model.pt'}  report: {args.output_dir / 'report.md'}", flush=True)
    return 0


def _write_outputs(out: Path, cfg: Any, report: Any, own: Any, plan: Any, seconds: float) -> None:
    """model.pt and the report, as the client CLI writes them (here with the plaintext twin's accuracy)."""
    import torch

    from ..client.predict import save_model
    from ..client.report import write_report
    from .prepare import load_features, normalisation_stats, normalise_with

    splits = own.splits if own is not None else load_features(cfg)
    mean, std = normalisation_stats(splits.train[0])
    backbone = own.backbone if own is not None else {"kind": "features", "name": cfg.dataset,
                                                     "num_features": splits.num_features}
    inference = {"classes": list(splits.classes), "backbone": backbone,
                 "normalisation": {"mean": mean, "std": std, "unit_rows": True}}
    model = report.model.to_torch(report.client.secret)
    out.mkdir(parents=True, exist_ok=True)
    save_model(out / "model.pt", model, inference)
    x, y = splits.test
    with torch.no_grad():
        pred = model(normalise_with(x, mean, std).to(model.weight.dtype)).argmax(1)
    steps = report.enc.steps
    measured = {"epochs_run": report.enc.epochs_run, "best_epoch": report.best_epoch + 1, "steps": len(steps),
                "step_seconds": report.enc.mean_step_seconds(), "total_seconds": round(seconds, 1),
                "refreshes_per_step": report.enc.refreshes_per_step(),
                "client_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    settings = {k: v for k, v in cfg.as_dict().items() if v is not None}
    settings.update({"split_train": len(splits.train[1]), "split_val": len(splits.val[1]),
                     "split_test": len(splits.test[1]), "backbone": backbone.get("name")})
    notes = ["one process: the client peak is the peak of the key owner and the server together"]
    write_report(out, title=f"HETAL on {Path(cfg.data).name if cfg.data else cfg.dataset}",
                 classes=list(splits.classes), y_true=y, y_pred=pred, history=report.client_history,
                 step_seconds=[s.seconds for s in steps], settings=settings, measured=measured,
                 estimate=plan.as_dict() if plan is not None else None, plain_accuracy=report.plain_test_acc,
                 notes=notes)


if __name__ == "__main__":
    sys.exit(main())
