"""The validation loss that ``rtho`` and ``marthe`` differentiate (:mod:`autolrs.callbacks.hypergrad`
takes its gradient at the end of each segment): one batch of ``val_batches`` at a time, in eval
mode, or the user's ``val_fn``.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Iterable

import torch

__all__ = ["batch_loss", "cycle_batches", "validation_loss"]


def validation_loss(
    model: torch.nn.Module, val_fn: Callable[[], Any] | None, val_batches: Any, val_criterion: Callable | None
) -> Callable[[], Any] | None:
    """The loss from ``val_batches`` (``(inputs, targets)`` pairs, cycled; ``val_criterion``
    defaults to cross-entropy), else ``val_fn`` (which must then return a loss with a graph),
    else None."""
    if val_batches is not None:
        return batch_loss(model, cycle_batches(val_batches), val_criterion or torch.nn.functional.cross_entropy)
    return val_fn


def cycle_batches(batches: Iterable) -> Callable[[], Any]:
    """The next batch of ``batches`` at every call, starting again when it is exhausted
    (an iterator that cannot restart raises StopIteration the second time)."""
    state = {"it": iter(batches)}

    def next_batch():
        try:
            return next(state["it"])
        except StopIteration:
            state["it"] = iter(batches)
            return next(state["it"])

    return next_batch


def batch_loss(model: torch.nn.Module, next_batch: Callable[[], Any], criterion: Callable) -> Callable[[], Any]:
    """A validation loss from the next ``(inputs, targets)`` batch, in eval mode (BatchNorm
    running statistics untouched, no dropout) and back to the mode the model was in."""

    def loss():
        x, y = next_batch()[:2]
        device = next(itertools.chain(model.parameters(), [torch.empty(())])).device
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        was_training = model.training
        model.eval()
        try:
            return criterion(model(x), y)
        finally:
            model.train(was_training)

    return loss
