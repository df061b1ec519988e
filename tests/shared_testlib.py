"""Helpers importable from any test folder (a unique module name: every folder's conftest.py
is a module called ``conftest``, so tests must not import from it)."""

from __future__ import annotations

import torch


def make_mlp(seed: int = 0, hidden: int = 32) -> torch.nn.Module:
    """A 64-hidden-10 MLP for scikit-learn's digits, seeded."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10))


def torch_scheduler_lrs(make_scheduler, lr: float, steps: int) -> list[float]:
    """The LR torch's scheduler gives each of ``steps`` optimizer steps (stepped once per step)."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = make_scheduler(optimizer)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs
