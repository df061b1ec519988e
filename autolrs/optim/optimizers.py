"""``AlraoSGD`` and ``AlraoAdam``: one optimizer over an ``AlraoModel`` whose pre-classifier
parameters each carry a per-unit LR tensor and whose classifier copies each get their own LR.

Where the LRs live: param group 0 holds the pre-classifier with ``lr = 1.0``, groups 1..N hold
the copies with ``lr = η_k`` (log-spaced); the per-unit LRs are in ``state[p]["unit_lr"]``. The
step uses ``group["lr"] * unit_lr`` (or ``group["lr"]`` where there is none). So ``group["lr"]``
stays the one scalar knob torch schedulers and the autolrs callback scale, and the sampled LRs are
saved and restored by the ordinary ``state_dict()``/``load_state_dict()``.

With ``lr_min == lr_max`` both reduce to ``torch.optim.SGD``/``Adam`` at that LR (tested).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from autolrs.optim.model import AlraoModel
from autolrs.optim.sampling import classifier_lrs, sample_tensor_lrs, sample_unit_lrs

__all__ = ["AlraoSGD", "AlraoAdam", "alrao_step"]


class _AlraoOptimizer(torch.optim.Optimizer):
    """Builds the param groups and samples the unit LRs; subclasses implement ``_update``."""

    def __init__(
        self,
        model: nn.Module,
        lr_min: float,
        lr_max: float,
        defaults: dict,
        *,
        seed: int = 0,
        generator: torch.Generator | None = None,
        per: str = "unit",
    ):
        if isinstance(model, AlraoModel):
            pre, copies = model.preclassifier, list(model.classifiers)
        else:  # a bare network: per-unit LRs everywhere, no copies
            pre, copies = model, []
        groups = [{"params": list(pre.parameters()), "lr": 1.0, "role": "preclassifier"}]
        for k, (copy, lr) in enumerate(zip(copies, classifier_lrs(max(1, len(copies)), lr_min, lr_max))):
            groups.append({"params": list(copy.parameters()), "lr": lr, "role": f"classifier_{k}"})
        defaults = dict(defaults, lr_min=lr_min, lr_max=lr_max, seed=seed, per=per)
        super().__init__(groups, defaults)
        generator = generator if generator is not None else torch.Generator().manual_seed(seed)
        for p, unit_lr in sample_unit_lrs(pre, lr_min, lr_max, generator, per=per):
            self.state[p]["unit_lr"] = unit_lr.to(device=p.device, dtype=p.dtype)

    def add_param_group(self, param_group: dict) -> None:
        """torch's ``add_param_group`` with Alrao's default for a group that names no ``lr``:
        ``lr = 1.0`` and a random LR per unit in ``[lr_min, lr_max]`` for each of its tensors (a
        tensor alone does not say which module it belongs to, so a unit is an index of its first
        dimension, one LR for a 0-d tensor; ``per='weight'`` gives every scalar its own). The LRs
        are drawn from a generator seeded by ``seed`` and the group's index, so a run is
        repeatable. A group with an ``lr`` is trained at that plain LR (the other options fall back
        to the constructor's, as in torch); an ``lr`` that is not a number > 0 is refused here."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        sample = "lr" not in param_group
        if not sample:
            lr = param_group["lr"]
            if isinstance(lr, bool) or not isinstance(lr, (int, float, torch.Tensor)) or not lr > 0:
                raise ValueError(f"{type(self).__name__}: a param group's 'lr' must be a number > 0, got {lr!r}")
        param_group = dict(param_group)
        param_group.setdefault("lr", 1.0)
        param_group.setdefault("role", f"group_{len(self.param_groups)}")
        super().add_param_group(param_group)
        if sample:
            d = self.defaults
            index = len(self.param_groups) - 1
            generator = torch.Generator().manual_seed(d["seed"] * 7919 + index)
            for p in self.param_groups[-1]["params"]:
                lr = sample_tensor_lrs(p.shape, d["lr_min"], d["lr_max"], generator, per=d["per"])
                self.state[p]["unit_lr"] = lr.to(device=p.device, dtype=p.dtype)

    def unit_lrs(self, expand: bool = False) -> list[torch.Tensor]:
        """The pre-classifier's per-unit LR tensors in parameter order (broadcastable shapes, or
        expanded to each parameter's shape)."""
        out = []
        for p in self.param_groups[0]["params"]:
            lr = self.state[p]["unit_lr"]
            out.append(lr.expand_as(p) if expand else lr)
        return out

    def classifier_lrs(self) -> list[float]:
        return [g["lr"] for g in self.param_groups[1:]]

    def _lr(self, group: dict, state: dict):
        unit = state.get("unit_lr")
        if unit is None:
            return group["lr"]
        return unit if group["lr"] == 1.0 else unit * group["lr"]

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                state = self.state[p]
                self._update(p, p.grad, state, group, self._lr(group, state))
        return loss

    def _update(self, p, grad, state, group, lr) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


def _apply(p: torch.Tensor, direction: torch.Tensor, lr, scale: float = 1.0) -> None:
    """p -= scale * lr * direction, with lr a float or a tensor broadcastable to p."""
    if isinstance(lr, torch.Tensor):
        p.addcmul_(lr, direction, value=-scale)
    else:
        p.add_(direction, alpha=-lr * scale)


class AlraoSGD(_AlraoOptimizer):
    """SGD with Alrao LRs: ``p <- p - lr_p * d``, ``d`` the gradient (+ weight decay, momentum).

    ``momentum_style='torch'`` (default) is torch.optim.SGD's heavy ball, the same for every unit.
    ``'alrao'`` is the original's variant: the buffer decays by ``1 - m * min(sqrt(lr_p), 1/m)``,
    so units with small LRs keep more momentum. Copies use the ordinary heavy ball either way.
    """

    def __init__(
        self,
        model: nn.Module,
        lr_min: float,
        lr_max: float,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        momentum_style: str = "torch",
        **kwargs,
    ):
        if momentum < 0 or weight_decay < 0:
            raise ValueError("momentum and weight_decay must be >= 0")
        if momentum_style not in ("torch", "alrao"):
            raise ValueError(f"momentum_style must be 'torch' or 'alrao', got {momentum_style!r}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov needs momentum > 0 and zero dampening")
        defaults = dict(
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            momentum_style=momentum_style,
        )
        super().__init__(model, lr_min, lr_max, defaults, **kwargs)

    def _update(self, p, grad, state, group, lr) -> None:
        d = grad.add(p, alpha=group["weight_decay"]) if group["weight_decay"] else grad
        m = group["momentum"]
        if m:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = d.clone()
            elif group["momentum_style"] == "alrao" and "unit_lr" in state:
                decay = 1 - m * state["unit_lr"].sqrt().clamp(0, 1 / m)
                buf.mul_(decay).add_(d, alpha=1 - group["dampening"])
            else:
                buf.mul_(m).add_(d, alpha=1 - group["dampening"])
            d = d.add(buf, alpha=m) if group["nesterov"] else buf
        _apply(p, d, lr)


class AlraoAdam(_AlraoOptimizer):
    """Adam with Alrao LRs: ``p <- p - lr_p / (1 - β1^t) * m / (sqrt(v / (1 - β2^t)) + eps)``
    (torch.optim.Adam's formula with the LR per unit; L2 weight decay as in Adam)."""

    def __init__(
        self,
        model: nn.Module,
        lr_min: float,
        lr_max: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        **kwargs,
    ):
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1) or eps < 0 or weight_decay < 0:
            raise ValueError(f"invalid Adam hyper-parameters betas={betas}, eps={eps}, weight_decay={weight_decay}")
        super().__init__(model, lr_min, lr_max, dict(betas=tuple(betas), eps=eps, weight_decay=weight_decay), **kwargs)

    def _update(self, p, grad, state, group, lr) -> None:
        beta1, beta2 = group["betas"]
        d = grad.add(p, alpha=group["weight_decay"]) if group["weight_decay"] else grad
        if "step" not in state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        t = state["step"].item()
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.lerp_(d, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(d, d, value=1 - beta2)
        bias1, bias2 = 1 - beta1**t, 1 - beta2**t
        denom = (exp_avg_sq.sqrt() / math.sqrt(bias2)).add_(group["eps"])
        if isinstance(lr, torch.Tensor):
            p.addcdiv_(exp_avg * lr, denom, value=-1 / bias1)
        else:
            p.addcdiv_(exp_avg, denom, value=-lr / bias1)


def alrao_step(
    model: AlraoModel,
    optimizer: _AlraoOptimizer,
    targets: torch.Tensor,
    loss: Callable | None = None,
    catch_up: bool = False,
    skip_nonfinite: bool = True,
) -> torch.Tensor:
    """The Alrao training step, after ``mixture_loss.backward()``:

    1. drop the copies' gradients from the mixture loss;
    2. train each copy as if it alone were the output: ``loss(copy(features.detach()), y)``,
       backward (no gradient reaches the pre-classifier); non-finite losses are skipped;
    3. ``optimizer.step()`` (the pre-classifier uses the mixture loss's gradients);
    4. update the Switch with the outputs of the forward pass (pre-step: prequential).

    Returns the copies' losses (float64, detached). One backward over the sum of the copies'
    losses gives each copy exactly its own gradient (their parameters are disjoint).
    """
    if model.last_x is None:
        raise RuntimeError("alrao_step before any forward of the model")
    own_loss = loss is None or loss is model.loss
    loss = model.loss if loss is None else loss
    for copy in model.classifiers:
        for p in copy.parameters():
            p.grad = None
    with torch.enable_grad():
        x = model.last_x
        own = [loss(copy(x), targets) for copy in model.classifiers]
        losses = torch.stack([value.detach() for value in own])
        # One sync for all copies; a non-finite copy stays out of the graph (a zero gradient
        # through it would still be 0 * nan).
        finite = torch.isfinite(losses).tolist() if skip_nonfinite else [True] * len(own)
        kept = [value for value, ok in zip(own, finite) if ok]
        if kept:
            torch.stack(kept).sum().backward()
    optimizer.step()
    if own_loss and model.last_outputs is not None:
        # The copies' losses on the forward's features are the Switch's prequential losses.
        losses = model.switch.update_losses(losses, targets)
        if catch_up:
            model.hard_catch_up()
        return losses
    return model.update_switch(targets, catch_up=catch_up)
