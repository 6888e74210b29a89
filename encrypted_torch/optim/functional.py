"""The update rules as functions on EncTensors (the optimizer classes keep the state).

Each scalar multiplication costs one level, so ``_with_levels`` refreshes (through the active
Refresher) a tensor that has none left, and only then.
"""

from __future__ import annotations

from ..refresh import level_policy
from ..tensor.enctensor import EncTensor


def _with_levels(t: EncTensor, levels: int = 1, back_at: int | None = None) -> EncTensor:
    """``t`` if it has ``levels`` levels, else refreshed (to ``back_at`` levels if given, else the top)."""
    if t.level >= levels:
        return t
    return t.refresh(levels, back_at=None if back_at is None else min(max(back_at, levels), t.ctx.top_level))


def scale(t: EncTensor, factor: float) -> EncTensor:
    """factor · t: 1 level."""
    return _with_levels(t) * float(factor)


def sgd(param: EncTensor, grad: EncTensor, buf: EncTensor | None, *, lr: float, momentum: float,
        dampening: float, nesterov: bool, weight_decay: float,
        keep_level: int | None = None) -> tuple[EncTensor, EncTensor | None]:
    """torch.optim.SGD's rule; returns (new param, new momentum buffer).

    The step is written as a sum of one-level terms, param − lr·c_g·grad − lr·c_b·buf (Nesterov:
    c_g = 1 + m(1 − d), c_b = m²), so the parameter lands at min(its level, grad's − 1, buf's − 1)
    instead of losing three levels through buf → m·buf → lr·(g + m·buf).

    ``keep_level`` (the levels the parameter's next use consumes, ``Parameter.use_levels``): a
    gradient out of levels comes back from its refresh at just enough levels to land the parameter
    there (one more with momentum, so that the buffer it starts lasts as long as a top-level one:
    the buffer's own refresh restarts it one level lower), and a buffer that would pull the parameter
    below it is refreshed first — one refresh of the buffer every few steps instead of one of the
    parameter in each of them. Values are the same either way; only where refreshes happen moves.
    """
    keep = keep_level if keep_level is not None and not weight_decay and level_policy().refreshes else None
    # a gradient at level 0 is refreshed once here, not in each use below
    grad = _with_levels(grad, back_at=None if keep is None else keep + (2 if momentum else 1))
    if weight_decay:
        grad = grad + scale(param, weight_decay)
    if not momentum:
        return param - scale(grad, lr), None
    if buf is None:  # torch: the first buffer is the gradient itself, undampened
        new_buf, c_grad, c_buf = grad, (1 + momentum if nesterov else 1.0), 0.0
    else:
        # used twice below: refreshed (if at all) once, before it could pull the parameter below `keep`
        buf = _with_levels(buf, 1 if keep is None or keep + 1 > buf.ctx.top_level else keep + 1)
        new_buf = scale(buf, momentum) + (grad if dampening == 0 else scale(grad, 1 - dampening))
        c_grad = (1 + momentum * (1 - dampening)) if nesterov else 1 - dampening
        c_buf = momentum * momentum if nesterov else momentum
    new_param = param - scale(grad, lr * c_grad)
    if c_buf:
        new_param = new_param - scale(buf, lr * c_buf)
    return new_param, new_buf


def nag(param: EncTensor, grad: EncTensor, v_prev: EncTensor | None, *, lr: float,
        gamma: float) -> tuple[EncTensor, EncTensor]:
    """Kim et al. 2018's Nesterov form (HETAL.md §5): v' = w − η∇; w' = (1−γ)v' + γ·v.

    Returns (new param, v'). With γ = 0 (the first step) it is one plain gradient step.
    """
    v_next = param - scale(grad, lr)
    if v_prev is None or gamma == 0:
        return v_next, v_next
    return scale(v_next, 1 - gamma) + scale(v_prev, gamma), v_next


def nag_gammas(steps: int) -> list[float]:
    """γ_1..γ_steps: λ_0 = 0, λ_{t+1} = (1 + √(1 + 4λ_t²))/2, γ_t = (1 − λ_t)/λ_{t+1}.

    γ_1 = 0 (the first step is plain gradient descent), then γ_t < 0.
    """
    lams = [0.0]
    for _ in range(steps + 1):
        lams.append((1 + (1 + 4 * lams[-1] ** 2) ** 0.5) / 2)
    return [(1 - lams[t]) / lams[t + 1] for t in range(1, steps + 1)]
