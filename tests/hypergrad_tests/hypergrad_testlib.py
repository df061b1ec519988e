"""Helpers for the hypergradient tests: a float64 digits MLP, fixed batches, training clones
and finite differences of a loss with respect to the LR."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from autolrs.callbacks.hypergrad import HypergradEngine
from autolrs.testing.training import make_mlp


def batches(digits, n: int, size: int = 64, offset: int = 0):
    x, y = digits
    return [(x[offset + i * size: offset + (i + 1) * size].double(), y[offset + i * size: offset + (i + 1) * size])
            for i in range(n)]


def model64(seed: int = 0) -> torch.nn.Module:
    return make_mlp(seed, hidden=16).double()


def make_optimizer(kind: str, model: torch.nn.Module, lr: float, **kw) -> torch.optim.Optimizer:
    """Two param groups (first layer, second layer at half the LR): exercises the LR ratios."""
    first, second = list(model[0].parameters()), list(model[2].parameters())
    groups = [{"params": first}, {"params": second, "lr": lr * 0.5}]
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[kind]
    return cls(groups, lr=lr, **kw)


RATIOS = [1.0, 0.5]


def clone(model, optimizer):
    """An independent copy of model and optimizer (state included), without hooks."""
    model2 = copy.deepcopy(model)
    params = dict(zip(map(id, model.parameters()), model2.parameters()))
    groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [params[id(p)] for p in g["params"]]}
              for g in optimizer.param_groups]
    opt2 = type(optimizer)(groups)
    opt2.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    return model2, opt2


def set_base_lr(optimizer, lr):
    for g, r in zip(optimizer.param_groups, RATIOS):
        g["lr"] = lr * r


def train_step(model, optimizer, batch, backward=None):
    optimizer.zero_grad()
    loss = F.cross_entropy(model(batch[0]), batch[1])
    (backward or (lambda l: l.backward()))(loss)
    optimizer.step()
    return loss


def reg_loss(model, optimizer, batch):
    """The training objective the optimizer's gradient is of: loss + wd/2 |w|^2 per group."""
    with torch.no_grad():
        loss = F.cross_entropy(model(batch[0]), batch[1])
        for g in optimizer.param_groups:
            wd = 0 if g.get("decoupled_weight_decay") else g.get("weight_decay", 0)  # AdamW's is no loss term
            for p in g["params"]:
                loss = loss + 0.5 * wd * (p * p).sum()
    return float(loss)


def val_loss_at(model, batch):
    with torch.no_grad():
        return float(F.cross_entropy(model(batch[0]), batch[1]))


def fd(f, lr, rel=1e-6):
    eps = lr * rel
    return (f(lr + eps) - f(lr - eps)) / (2 * eps)


def engine(model, optimizer, val_batch=None, warnings=None):
    val = None if val_batch is None else (lambda: F.cross_entropy(model(val_batch[0]), val_batch[1]))
    log = warnings if warnings is not None else []
    return HypergradEngine(model, optimizer, lambda: RATIOS, val, lambda key, msg: log.append((key, msg)))
