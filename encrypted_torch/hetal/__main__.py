"""``python -m encrypted_torch.hetal --dataset digits|mnist|snips``: a whole HETAL run, reported."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..executors import cli as executor_cli
from .config import add_config_arguments, config_from_args
from .pipeline import run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m encrypted_torch.hetal", description=__doc__)
    add_config_arguments(ap, default_dataset="mnist")
    ap.add_argument("--json", type=Path, help="also write the report as JSON here")
    ap.add_argument("--no-progress", action="store_true")
    args = executor_cli.parse_args(ap, argv)  # adds and applies --executor, --ray-address
    cfg = config_from_args(args)
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
