"""How ``torch.optim.SGD`` and ``torch.optim.Adam`` move the weights, and how that move changes
with the LR: the formulas behind the hypergradient engine (:mod:`autolrs.callbacks.hypergrad`).

``w_{t+1} = w_t - lr * d_t``: ``d`` is the update direction per unit LR. For a tangent ``dg``
(the derivative of the gradient with respect to the LR) and the tangents ``s`` of the
optimizer's own state, each ``*_tangent`` function returns ``(d, dd/dlr, new state tangents)``
with the optimizer's own arithmetic, so the engine's recursion follows the real update.
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["adam_direction", "adam_tangent", "bias_corrections", "check_optimizer", "decoupled", "sgd_tangent"]


def check_optimizer(optimizer: torch.optim.Optimizer) -> str:
    """``"sgd"`` or ``"adam"`` (AdamW, Adam with decoupled weight decay, included);
    ValueError for an optimizer the recursions do not model."""
    if type(optimizer) is torch.optim.SGD:
        kind = "sgd"
    elif type(optimizer) in (torch.optim.Adam, torch.optim.AdamW):
        kind = "adam"
    else:
        raise ValueError(
            f"the hypergradient tuners support torch.optim.SGD and torch.optim.Adam (and AdamW), "
            f"not {type(optimizer).__name__}"
        )
    for i, g in enumerate(optimizer.param_groups):
        if g.get("maximize"):
            raise ValueError(f"param group {i}: maximize=True is not supported by the hypergradient tuners")
        if kind == "adam" and g.get("amsgrad"):
            raise ValueError(f"param group {i}: amsgrad is not supported by the hypergradient tuners")
    return kind


def decoupled(group: dict) -> bool:
    """AdamW's weight decay: ``w <- w (1 - lr wd)`` beside the update, not in the gradient
    (``d = a + wd * w``, ``a`` Adam's direction)."""
    return bool(group.get("decoupled_weight_decay")) and bool(group.get("weight_decay", 0))


def adam_direction(group: dict, st: dict) -> torch.Tensor | None:
    """Adam's last update per unit LR, from its state (None before the first step)."""
    if "exp_avg" not in st:
        return None
    b1, b2 = group["betas"]
    bc1, bc2 = bias_corrections(st["step"], b1, b2)
    denom = (
        st["exp_avg_sq"].sqrt() / bc2.sqrt()
        if isinstance(bc2, torch.Tensor)
        else st["exp_avg_sq"].sqrt() / math.sqrt(bc2)
    ).add_(group["eps"])
    return st["exp_avg"] / bc1 / denom


def sgd_tangent(group, st, g, dg, s):
    """torch.optim.SGD: ``buf = m * buf + (1 - damp) * g`` (``buf = g`` at first), direction
    ``buf`` or ``g + m * buf`` (Nesterov); the tangent ``Y`` of ``buf`` follows the same rule."""
    m = group.get("momentum", 0)
    if not m:
        return g, dg, None
    damp, nesterov = group.get("dampening", 0), group.get("nesterov", False)
    buf = st.get("momentum_buffer")
    y = None if s is None else s[0]
    if buf is None:
        new_buf, new_y = g, dg
    else:
        new_buf = (buf * m).add_(g, alpha=1 - damp)
        new_y = None
        if y is not None:
            new_y = y * m
        if dg is not None:
            new_y = dg * (1 - damp) if new_y is None else new_y.add_(dg, alpha=1 - damp)
    if nesterov:
        direction = g.add(new_buf, alpha=m)
        ddir = (
            None
            if dg is None and new_y is None
            else (dg if new_y is None else (new_y * m if dg is None else dg.add(new_y, alpha=m)))
        )
    else:
        direction, ddir = new_buf, new_y
    return direction, ddir, [new_y]


def adam_tangent(group, st, g, dg, s):
    """torch.optim.Adam (coupled weight decay already in ``g``). With ``s = step + 1``,
    ``a = (m'/bc1) / (sqrt(v'/bc2) + eps)``; its LR derivative from the tangents ``M`` of
    ``m'`` and ``V`` of ``v'``: ``da = (M/bc1)/den - (m'/bc1) * (V/bc2) / (2 u den^2)``,
    ``u = sqrt(v'/bc2)``, ``den = u + eps``. (AdaTune's version has no standalone Z term
    and a (1 - lr*coeff) factor; this one is checked against finite differences.)"""
    b1, b2 = group["betas"]
    eps = group["eps"]
    step = st.get("step", 0)
    if "exp_avg" in st:
        m1 = (st["exp_avg"] * b1).add_(g, alpha=1 - b1)
        v1 = (st["exp_avg_sq"] * b2).addcmul_(g, g, value=1 - b2)
    else:
        m1, v1 = g * (1 - b1), (g * g).mul_(1 - b2)
    bc1, bc2 = bias_corrections(step + 1, b1, b2)
    u = (v1 / bc2).sqrt_()
    den = u + eps
    mhat = m1 / bc1
    direction = mhat / den
    M = None if s is None else s[0]
    V = None if s is None else s[1]
    M1 = None if M is None else M * b1
    if dg is not None:
        M1 = dg * (1 - b1) if M1 is None else M1.add_(dg, alpha=1 - b1)
    V1 = None if V is None else V * b2
    if dg is not None:
        gdg = (g * dg).mul_(2 * (1 - b2))
        V1 = gdg if V1 is None else V1.add_(gdg)
    if M1 is None and V1 is None:
        return direction, None, None
    ddir = torch.zeros_like(g) if M1 is None else (M1 / bc1) / den
    if V1 is not None:
        du = torch.where(u > 0, (V1 / bc2) / (2 * u).clamp_min(torch.finfo(u.dtype).tiny), torch.zeros_like(u))
        ddir = ddir - mhat * du / (den * den)
    return direction, ddir, [M1, V1]


def bias_corrections(step: Any, b1: float, b2: float):
    if isinstance(step, torch.Tensor):
        if step.device.type == "cpu":
            step = float(step)  # a CPU scalar: no device sync
        else:
            return 1 - torch.pow(b1, step), 1 - torch.pow(b2, step)
    return 1 - b1**step, 1 - b2**step
