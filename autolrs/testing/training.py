"""Real training on real data for tests and benchmarks: scikit-learn's digits (1,797 8x8
images, bundled with scikit-learn: no download), a seeded MLP for them, shuffled mini-batches,
one training step, the validation loss, the LRs a torch scheduler gives, and torch-lr-finder's
range test written out (the reference ``LRFinder`` is compared with)."""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, Callable

import torch

__all__ = [
    "DigitsBatches",
    "digits",
    "make_mlp",
    "torch_lr_finder_loop",
    "torch_scheduler_lrs",
    "train_step",
    "val_loss",
]


@lru_cache(maxsize=1)
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The digits as ``(x float32 in [0, 1] of shape (1797, 64), y int64)``."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    return x, y


def make_mlp(seed: int = 0, hidden: int = 32, *, batchnorm: bool = False, dropout: float = 0.0) -> torch.nn.Module:
    """A 64-``hidden``-10 MLP for the digits (optionally with BatchNorm and dropout), seeded."""
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = [torch.nn.Linear(64, hidden)]
    if batchnorm:
        layers.append(torch.nn.BatchNorm1d(hidden))
    layers.append(torch.nn.ReLU())
    if dropout:
        layers.append(torch.nn.Dropout(dropout))
    layers.append(torch.nn.Linear(hidden, 10))
    return torch.nn.Sequential(*layers)


class DigitsBatches:
    """Endless shuffled mini-batches of the digits (its own generator: reproducible)."""

    def __init__(self, batch_size: int = 64, seed: int = 0):
        self.x, self.y = digits()
        self.batch_size = batch_size
        self.gen = torch.Generator().manual_seed(seed)
        self._order = torch.empty(0, dtype=torch.long)
        self._pos = 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._pos + self.batch_size > len(self._order):
            self._order = torch.randperm(len(self.x), generator=self.gen)
            self._pos = 0
        idx = self._order[self._pos : self._pos + self.batch_size]
        self._pos += self.batch_size
        return self.x[idx], self.y[idx]


def train_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: DigitsBatches, scaler: Any = None
) -> torch.Tensor:
    """One cross-entropy step on the next batch (through ``scaler`` if given); returns the loss."""
    model.train()
    x, y = batches.next()
    optimizer.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return loss


def val_loss(model: torch.nn.Module) -> float:
    """Cross-entropy over all the digits in eval mode (the model's mode is put back)."""
    x, y = digits()
    was_training = model.training
    model.eval()
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(model(x), y).item()
    model.train(was_training)
    return loss


def torch_scheduler_lrs(make_scheduler: Callable[[torch.optim.Optimizer], Any], lr: float, steps: int) -> list[float]:
    """The LR torch's scheduler gives each of ``steps`` optimizer steps (stepped once per step)."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = make_scheduler(optimizer)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def torch_lr_finder_loop(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion: Callable[..., Any],
    batches: Any,
    end_lr: float,
    num_iter: int,
    smooth_f: float = 0.05,
    diverge_th: float = 5.0,
) -> dict[str, list[float]]:
    """torch-lr-finder's ``range_test`` written out: its ExponentialLR (``base * (end / base) **
    (i / (num_iter - 1))``), one batch per step (``batches`` restarted when exhausted, as its
    loader is), the loss smoothed, stopped when it exceeds ``diverge_th`` times the best. The
    model and optimizer are left where the sweep ended."""
    base = optimizer.param_groups[0]["lr"]
    history: dict[str, list[float]] = {"lr": [], "loss": []}
    it = iter(batches)
    best = math.inf
    for i in range(num_iter):
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(batches)
            x, y = next(it)
        lr = base * (end_lr / base) ** (i / (num_iter - 1))
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
        value = loss.item()
        history["lr"].append(lr)
        if i:
            value = smooth_f * value + (1 - smooth_f) * history["loss"][-1]
        best = min(best, value)
        history["loss"].append(value)
        if value > diverge_th * best:
            break
    return history
