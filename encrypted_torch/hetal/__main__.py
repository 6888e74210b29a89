"""``python -m encrypted_torch.hetal --dataset digits|mnist|snips``: a whole HETAL run, reported."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import DATASET_DEFAULTS, config_for
from .pipeline import run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m encrypted_torch.hetal", description=__doc__)
    ap.add_argument("--dataset", choices=sorted(DATASET_DEFAULTS), default="mnist")
    ap.add_argument("--preset", choices=["test", "fast", "deep"])
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--patience", type=int)
    ap.add_argument("--optimizer", choices=["nesterov", "nag", "sgd"])
    ap.add_argument("--n-train", type=int)
    ap.add_argument("--n-val", type=int)
    ap.add_argument("--n-test", type=int)
    ap.add_argument("--max-steps", type=int, help="batches per epoch at most (benchmarks)")
    ap.add_argument("--data-dir", help="SNIPS directory (train.txt, dev.txt, test.txt)")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--json", type=Path, help="also write the report as JSON here")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    cfg = config_for(args.dataset, preset=args.preset, batch_size=args.batch_size, lr=args.lr,
                     epochs=args.epochs, patience=args.patience, optimizer=args.optimizer,
                     n_train=args.n_train, n_val=args.n_val, n_test=args.n_test, max_steps=args.max_steps,
                     data_dir=args.data_dir, seed=args.seed)
    print(f"HETAL on {cfg.dataset}: preset={cfg.preset} batch={cfg.batch_size} lr={cfg.lr} "
          f"epochs≤{cfg.epochs} patience={cfg.patience} optimizer={cfg.optimizer}", flush=True)
    report = run(cfg, progress=not args.no_progress)
    summary = report.summary()
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        print(f"{key:<{width}}  {value}")
    for row in report.client_history:
        print(f"  epoch {row['epoch'] + 1}: val_loss={row['val_loss']:.4f} val_acc={row['val_acc']:.4f}"
              f"{'  *best so far' if row['improved'] else ''}")
    if args.json:
        args.json.write_text(json.dumps({"config": cfg.as_dict(), "summary": summary,
                                         "client_history": report.client_history}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
