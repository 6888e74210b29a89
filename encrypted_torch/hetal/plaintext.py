"""The plaintext twin: the same training in torch (same init, batches, lr, epochs, early stopping)."""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field

import torch

from ..optim.functional import nag_gammas
from .config import HetalConfig


@dataclass
class PlainResult:
    model: torch.nn.Linear
    history: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    epochs_run: int = 0
    step_seconds: float = 0.0


def make_optimizer(cfg: HetalConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer | None:
    if cfg.optimizer == "nesterov":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr)
    if cfg.optimizer == "nag":
        return None  # applied by hand below: torch has no Kim et al. form
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


def train_plaintext(cfg: HetalConfig, x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor,
                    y_val: torch.Tensor, num_classes: int, init_packed: torch.Tensor,
                    sample_order: torch.Tensor) -> PlainResult:
    """Train torch.nn.Linear exactly as the encrypted run does, with exact softmax cross-entropy."""
    d = x_train.shape[1]
    model = torch.nn.Linear(d, num_classes).double()
    with torch.no_grad():
        model.weight.copy_(init_packed[:, :d])
        model.bias.copy_(init_packed[:, d])
    params = list(model.parameters())
    opt = make_optimizer(cfg, params)
    xs, ys = x_train.double()[sample_order], y_train[sample_order]
    batches = [(xs[i : i + cfg.batch_size], ys[i : i + cfg.batch_size]) for i in range(0, len(xs), cfg.batch_size)]
    rng = random.Random(cfg.seed)  # the same batch permutation as the server's DataLoader
    best, best_loss, bad, result = None, math.inf, 0, PlainResult(model)
    v_prev: list[torch.Tensor] | None = None
    step, seconds = 0, 0.0
    for epoch in range(cfg.epochs):
        order = list(range(len(batches)))
        rng.shuffle(order)
        if cfg.max_steps is not None:
            order = order[: cfg.max_steps]
        for bi in order:
            xb, yb = batches[bi]
            start = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            for p in params:
                p.grad = None
            loss.backward()
            step += 1
            if opt is not None:
                opt.step()
            else:
                gamma = nag_gammas(step)[-1]
                with torch.no_grad():
                    v = [p - cfg.lr * p.grad for p in params]
                    for p, vn, vp in zip(params, v, v_prev or v, strict=True):
                        p.copy_(vn if v_prev is None else (1 - gamma) * vn + gamma * vp)
                    v_prev = v
            seconds += time.perf_counter() - start
        with torch.no_grad():
            val_logits = model(x_val.double())
            val_loss = torch.nn.functional.cross_entropy(val_logits, y_val).item()
            val_acc = (val_logits.argmax(1) == y_val).double().mean().item()
        result.history.append({"epoch": epoch, "val_loss": val_loss, "val_acc": val_acc})
        result.epochs_run = epoch + 1
        if val_loss < best_loss:
            best_loss, bad, result.best_epoch = val_loss, 0, epoch
            best = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    if best is not None:
        model.load_state_dict(best)
    result.step_seconds = seconds / max(1, step)
    return result


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x.to(next(model.parameters()).dtype)).argmax(1) == y).double().mean().item()
