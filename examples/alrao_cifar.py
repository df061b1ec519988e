"""Alrao for the CIFAR-10 example: split a model of ``cifar_models`` into a pre-classifier and
its final Linear, replace that Linear by ``n_classifiers`` copies with log-spaced LRs, and
build the matching Alrao optimizer.

    model, optimizer = build_alrao("small_cnn", 1e-5, 10.0)
    loss = alrao_train_step(model, optimizer, xb, yb)      # instead of backward + optimizer.step()
    lr_min, lr_max = interval_from_range_test("small_cnn", batches, server)   # or: ask the server

The model returns log-probabilities of the Switch mixture, so ``cross_entropy(model(x), y)``
(which log-softmaxes them again, a no-op on log-probabilities) and ``argmax`` evaluate it as
they would a plain network.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cifar_models import MODELS  # noqa: E402

from autolrs.optim import AlraoAdam, AlraoModel, AlraoSGD, LinearClassifier, alrao_step  # noqa: E402

#: Decades an interval from a range test spans at least: Alrao needs units at LRs well below
#: the best one (the paper's default interval spans six), and the curve's upper end is already
#: near divergence.
INTERVAL_DECADES = 3.0


def split_last_linear(net: nn.Module) -> tuple[nn.Module, nn.Linear]:
    """(everything before the final Linear, that Linear) of an ``nn.Sequential`` ending in one,
    as every model in ``cifar_models`` does."""
    if not isinstance(net, nn.Sequential) or not isinstance(net[-1], nn.Linear):
        raise ValueError(f"expected an nn.Sequential ending with nn.Linear, got {type(net).__name__}")
    return nn.Sequential(*list(net.children())[:-1]), net[-1]


def build_alrao(model_name: str, lr_min: float = 1e-5, lr_max: float = 10.0, n_classifiers: int = 10, *,
                optimizer: str = "sgd", momentum: float = 0.0, weight_decay: float = 0.0, seed: int = 0,
                num_classes: int = 10, device: torch.device | str = "cpu", likelihood: str = "mean",
                check_finite: bool = True):
    """``(AlraoModel, AlraoSGD | AlraoAdam)`` for ``cifar_models.MODELS[model_name]``.

    ``seed`` seeds both the weights (torch.manual_seed) and the sampled LRs. The original's CIFAR
    runs used SGD without momentum or weight decay, hence the defaults.
    """
    torch.manual_seed(seed)
    pre, last = split_last_linear(MODELS[model_name](num_classes))
    model = AlraoModel("classification", nn.NLLLoss(), pre, n_classifiers, LinearClassifier,
                       last.in_features, num_classes, likelihood=likelihood, check_finite=check_finite).to(device)
    if optimizer.lower() == "sgd":
        opt = AlraoSGD(model, lr_min, lr_max, momentum=momentum, weight_decay=weight_decay, seed=seed)
    elif optimizer.lower() == "adam":
        opt = AlraoAdam(model, lr_min, lr_max, weight_decay=weight_decay, seed=seed)
    else:
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")
    return model, opt


def alrao_train_step(model: AlraoModel, optimizer, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    """One training step; returns the mixture's loss (detached, no device sync)."""
    optimizer.zero_grad(set_to_none=True)
    loss = nn.functional.nll_loss(model(xb), yb)
    loss.backward()
    alrao_step(model, optimizer, yb)
    return loss.detach()


def interval_from_range_test(model_name: str, batches, server: str, *, num_iter: int = 100, seed: int = 0,
                             device: torch.device | str = "cpu", job: str | None = None) -> tuple[float, float]:
    """An Alrao interval from an LR range test run by the server on a plain copy of the model
    (SGD without momentum, as Alrao's optimizer): ``max`` is the LR at the lowest smoothed loss,
    ``min`` at least :data:`INTERVAL_DECADES` decades below it
    (:func:`autolrs.lr_curve.bounds_from_curve`). The copy is thrown away afterwards; ``batches``
    is re-iterated as needed. Raises ServerUnavailable without a server and ValueError when the
    curve supports no interval."""
    from autolrs.callbacks import LRFinder

    torch.manual_seed(seed)
    net = MODELS[model_name]().to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-6)

    def endless():
        while True:
            yield from batches.epoch()

    finder = LRFinder(net, optimizer, nn.CrossEntropyLoss(), server=server, device=device, job=job)
    finder.range_test(endless(), start_lr=1e-6, end_lr=10.0, num_iter=num_iter)
    return finder.bounds(min_decades=INTERVAL_DECADES)
