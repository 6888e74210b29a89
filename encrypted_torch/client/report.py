"""The run's report next to the model: accuracy, per-class accuracy, confusion matrix, curves, cost.

``write_report`` writes ``report.md`` and ``report.html`` (the same content), ``confusion.png`` and
``curves.png`` (matplotlib, the ``report`` extra; without it the report says so and keeps the tables),
and ``report.json`` with every number. The dry run's estimate sits next to the measurement.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import torch

__all__ = ["confusion_matrix", "per_class_accuracy", "write_report"]


def confusion_matrix(y_true: torch.Tensor, y_pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts (true class, predicted class), int64 (num_classes, num_classes)."""
    m = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    m.index_put_((y_true.long(), y_pred.long()), torch.ones(len(y_true), dtype=torch.int64), accumulate=True)
    return m


def per_class_accuracy(matrix: torch.Tensor) -> list[float | None]:
    """Recall of each class (None for a class absent from the test set)."""
    totals = matrix.sum(1)
    return [None if int(t) == 0 else float(matrix[i, i]) / float(t) for i, t in enumerate(totals)]


def _plots(out: Path, matrix: torch.Tensor, classes: list[str], history: list[dict],
           step_seconds: list[float]) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * n, 1.0 + 0.45 * n))
    ax.imshow(matrix.numpy(), cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    peak = int(matrix.max()) if matrix.numel() else 0
    for i in range(n):
        for j in range(n):
            v = int(matrix[i, j])
            if v:
                ax.text(j, i, str(v), ha="center", va="center", color="white" if v > peak / 2 else "black",
                        fontsize=8)
    ax.set_title("confusion matrix (test set)")
    fig.tight_layout()
    fig.savefig(out / "confusion.png", dpi=100)
    plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    epochs = [h["epoch"] + 1 for h in history]
    axes[0].plot(epochs, [h["val_loss"] for h in history], "o-", label="validation loss")
    axes[0].set_xlabel("epoch")
    twin = axes[0].twinx()
    twin.plot(epochs, [h["val_acc"] for h in history], "s--", color="tab:orange", label="validation accuracy")
    axes[0].set_title("key owner's validation (decrypted logits)")
    axes[0].legend(loc="upper left", fontsize=8)
    twin.legend(loc="lower left", fontsize=8)
    axes[1].plot(range(1, len(step_seconds) + 1), step_seconds, ".-")
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("seconds")
    axes[1].set_title("encrypted step time")
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=100)
    plt.close(fig)
    return ["confusion.png", "curves.png"]


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def write_report(out: Path, *, title: str, classes: list[str], y_true: torch.Tensor, y_pred: torch.Tensor,
                 history: list[dict], step_seconds: list[float], settings: dict[str, Any],
                 measured: dict[str, Any], estimate: dict[str, Any] | None = None,
                 plain_accuracy: float | None = None, notes: list[str] | None = None) -> Path:
    """Write report.md / report.html / report.json (and the PNGs) into ``out``; returns report.md's path."""
    from ..hetal.estimate import compare

    out.mkdir(parents=True, exist_ok=True)
    matrix = confusion_matrix(y_true, y_pred, len(classes))
    recall = per_class_accuracy(matrix)
    acc = float((y_true == y_pred).double().mean()) if len(y_true) else float("nan")
    images = _plots(out, matrix, classes, history, step_seconds)
    sections: list[tuple[str, list[list[str]] | str]] = []
    headline = [["test accuracy (encrypted training)", f"{acc:.4f} on {len(y_true)} samples"]]
    if plain_accuracy is not None:
        headline.append(["test accuracy (plaintext twin)", f"{plain_accuracy:.4f}"])
    for k in ("epochs_run", "best_epoch", "steps", "total_seconds", "step_seconds", "refreshes_per_step",
              "upload_bytes", "bytes_received", "client_peak_mb"):
        if measured.get(k) is not None:
            headline.append([k.replace("_", " "), _fmt(measured[k])])
    sections.append(("Result", [["", ""]] + headline))
    sections.append(("Per-class accuracy (test)", [["class", "test samples", "accuracy"]] + [
        [c, str(int(matrix[i].sum())), _fmt(r)] for i, (c, r) in enumerate(zip(classes, recall, strict=True))]))
    if images:
        sections.append(("Plots", "\n".join(f"![{p[:-4]}]({p})" for p in images)))
    else:
        sections.append(("Plots", "matplotlib is not installed (pip install 'encrypted_torch[report]'): no PNGs."))
    if history:
        sections.append(("Validation by epoch (the key owner's)", [["epoch", "val loss", "val accuracy", "best"]] + [
            [str(h["epoch"] + 1), f"{h['val_loss']:.4f}", f"{h['val_acc']:.4f}", "*" if h.get("improved") else ""]
            for h in history]))
    if estimate is not None:
        rows = [["quantity", "dry-run estimate", "measured", "measured / estimate"]]
        for label, e, m in compare(estimate, measured):
            ratio = f"{m / e:.2f}" if e and m is not None else "–"
            rows.append([label, _fmt(e), _fmt(m), ratio])
        sections.append(("Estimate (--dry-run) against the measurement", rows))
    sections.append(("Settings", [["setting", "value"]] + [[k, _fmt(v)] for k, v in settings.items()]))
    if notes:
        sections.append(("Notes", "\n".join(f"- {n}" for n in notes)))
    md = [f"# {title}", ""]
    body = [f"<h1>{html.escape(title)}</h1>"]
    for name, content in sections:
        md += [f"## {name}", ""]
        body.append(f"<h2>{html.escape(name)}</h2>")
        if isinstance(content, str):
            md += [content, ""]
            for line in content.splitlines():
                if line.startswith("!["):
                    src = line[line.index("(") + 1:-1]
                    body.append(f'<img src="{html.escape(src)}" alt="{html.escape(src)}">')
                else:
                    body.append(f"<p>{html.escape(line.lstrip('- '))}</p>")
            continue
        head, *rows = content
        md.append("| " + " | ".join(head) + " |")
        md.append("|" + "|".join("---" for _ in head) + "|")
        md += ["| " + " | ".join(r) + " |" for r in rows]
        md.append("")
        cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
        trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
        body.append(f"<table><tr>{cells}</tr>{trs}</table>")
    (out / "report.md").write_text("\n".join(md))
    style = "body{font-family:sans-serif;max-width:60em;margin:2em auto}td,th{padding:2px 8px;border:1px solid #ccc}"
    (out / "report.html").write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
                                     f"</title><style>{style}</style></head><body>{''.join(body)}</body></html>")
    record = {"title": title, "test_accuracy": acc, "plain_test_accuracy": plain_accuracy, "classes": classes,
              "per_class_accuracy": recall, "confusion_matrix": matrix.tolist(), "history": history,
              "step_seconds": step_seconds, "settings": settings, "measured": measured, "estimate": estimate}
    (out / "report.json").write_text(json.dumps(record, indent=2, default=str))
    return out / "report.md"
