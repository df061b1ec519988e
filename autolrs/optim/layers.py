"""Ready-made classifier copies and the regression losses Alrao needs.

Classifier copies must return LOG-probabilities: the Switch mixes probabilities, and the mixture
is fed to NLLLoss. Every layer here keeps its Linear under ``.fc`` so ``hard_catch_up`` and users
find it under one name.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LinearClassifier", "LinearClassifierRNN", "LinearRegressor", "L2LossLog", "L2LossAdditional"]


class LinearClassifier(nn.Module):
    """Linear + log_softmax."""

    def __init__(self, in_features: int, n_classes: int):
        super().__init__()
        self.fc = nn.Linear(in_features, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.fc(x), dim=-1)


class LinearClassifierRNN(LinearClassifier):
    """For a recurrent pre-classifier with (seq, batch, hidden) outputs: flattens to
    (seq * batch, hidden) so the targets are the flattened (seq * batch,) tokens."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.reshape(-1, x.shape[-1]))


class LinearRegressor(nn.Module):
    """A Linear output for regression."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.fc = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class L2LossLog(nn.Module):
    """Gaussian negative log-likelihood (variance ``sigma2``) of one model's prediction, summed
    over output dimensions and averaged over the batch: the per-copy loss for regression."""

    def __init__(self, sigma2: float = 1.0):
        super().__init__()
        self.sigma2 = sigma2

    def forward(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        nll = 0.5 * ((pred - y) ** 2 / self.sigma2 + math.log(2 * math.pi * self.sigma2))
        return nll.reshape(nll.shape[0], -1).sum(1).mean()


class L2LossAdditional(nn.Module):
    """Negative log-likelihood of the posterior-weighted Gaussian mixture of the copies'
    predictions: takes the regression ``AlraoModel`` output ``(stacked [..., N], posterior)``."""

    def __init__(self, sigma2: float = 1.0):
        super().__init__()
        self.sigma2 = sigma2

    def forward(self, output: tuple[torch.Tensor, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        stacked, posterior = output
        nll = 0.5 * ((stacked - y.unsqueeze(-1)) ** 2 / self.sigma2 + math.log(2 * math.pi * self.sigma2))
        per_model = -nll.reshape(nll.shape[0], -1, nll.shape[-1]).sum(1)  # (batch, N) log-lik
        mixture = torch.logsumexp(per_model + posterior.log(), -1)
        return -mixture.mean()
