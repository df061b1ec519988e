"""Switch model averaging over the classifier copies (van Erven, Grünwald & de Rooij, "Catching
up faster by switching sooner", Algorithm 1, as Alrao's original ``Switch`` implements it).

Weights ``w`` (2 x N, kept in log space): row 0 is the mass of "no switch yet", row 1 the mass
that has already switched. Start: ``w[0] = θ/N``, ``w[1] = (1-θ)/N``, posterior ``1/N``, ``t = 1``.
One update with log-likelihoods ``ℓ_j`` of the N models on a batch:

1. ``w[r, j] *= exp(ℓ_j)`` for both rows;
2. ``π_t = 1/(t+1)``; ``pool = π_t Σ_j w[0, j]``; ``w[0, j] *= 1 - π_t``;
3. ``w[0, j] += θ pool / N``; ``w[1, j] += (1-θ) pool / N``;
4. normalise the 2N weights to sum 1; posterior ``p_j = w[0, j] + w[1, j]``; ``t += 1``.

``likelihood='mean'`` (default, the original's) uses the batch-*mean* log-likelihood (minus each
model's mean loss); ``'batch'`` uses the log-likelihood of the whole batch (the mean loss times the
number of examples), the Bayesian update the algorithm assumes, which moves the posterior
batch-size times faster. Measured on the eight tasks of ``bench/parity.py``, ``'batch'`` is worse
than ``'mean'`` on six of them, better on one (see the README), hence the default.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Switch"]

TASKS = ("classification", "regression")


class Switch(nn.Module):
    """Posterior over N models, updated prequentially. Its state (``logw``, ``logposterior``,
    ``t``) are buffers, so it is saved and restored with the model's ``state_dict``."""

    def __init__(
        self,
        n_models: int,
        theta: float = 0.9999,
        task: str = "classification",
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        likelihood: str = "mean",
    ):
        super().__init__()
        if n_models < 1:
            raise ValueError(f"need at least one model, got {n_models}")
        if not 0.0 < theta < 1.0:
            raise ValueError(f"theta must lie in (0, 1), got {theta}")
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if likelihood not in ("batch", "mean"):
            raise ValueError(f"likelihood must be 'batch' or 'mean', got {likelihood!r}")
        if loss is None:
            if task == "regression":
                raise ValueError("a regression Switch needs a loss (e.g. L2LossLog())")
            loss = F.nll_loss
        self.n_models, self.theta, self.task, self.loss, self.likelihood = n_models, theta, task, loss, likelihood
        # float64: after thousands of updates the log-weights differ by thousands of nats.
        self.logw: torch.Tensor  # buffers, typed for the checker (Module.__getattr__ is Tensor | Module)
        self.logposterior: torch.Tensor
        self.t: torch.Tensor
        self.register_buffer("logw", torch.empty(2, n_models, dtype=torch.float64))
        self.register_buffer("logposterior", torch.empty(n_models, dtype=torch.float64))
        self.register_buffer("t", torch.zeros((), dtype=torch.long))
        self.reset()

    def reset(self) -> None:
        n, theta = self.n_models, self.theta
        self.logw[0].fill_(math.log(theta / n))
        self.logw[1].fill_(math.log((1 - theta) / n))
        self.logposterior.fill_(-math.log(n))
        self.t.fill_(1)

    def posterior(self) -> torch.Tensor:
        return self.logposterior.exp()

    @torch.no_grad()
    def update_loglik(self, loglik: torch.Tensor | Sequence[float]) -> torch.Tensor:
        """One switch update from the N models' log-likelihoods of the latest batch; returns the
        new posterior. A non-finite log-likelihood counts as zero likelihood (the model gets no
        weight until switching gives some back) rather than poisoning the others; if every model
        is non-finite the update raises ValueError."""
        ll = torch.as_tensor(loglik, dtype=torch.float64, device=self.logw.device).reshape(-1)
        if ll.numel() != self.n_models:
            raise ValueError(f"expected {self.n_models} log-likelihoods, got {ll.numel()}")
        ll = torch.where(torch.isnan(ll) | (ll == math.inf), torch.full_like(ll, -math.inf), ll)
        if self.n_models == 1:
            self.t += 1
            return self.posterior()
        if not torch.isfinite(ll).any():
            raise ValueError("every model's log-likelihood is non-finite")
        n, theta = self.n_models, self.theta
        logw = self.logw + ll  # 1.
        pi = 1.0 / (self.t.item() + 1.0)  # 2.
        log_pool = math.log(pi) + torch.logsumexp(logw[0], 0)
        row0 = logw[0] + math.log1p(-pi)
        row0 = torch.logaddexp(row0, math.log(theta / n) + log_pool)  # 3.
        row1 = torch.logaddexp(logw[1], math.log((1 - theta) / n) + log_pool)
        logw = torch.stack([row0, row1])
        logw -= torch.logsumexp(logw.reshape(-1), 0)  # 4.
        self.logw.copy_(logw)
        self.logposterior.copy_(torch.logaddexp(logw[0], logw[1]))
        self.t += 1
        return self.posterior()

    @torch.no_grad()
    def update(self, outputs: Sequence[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        """Switch update from the models' outputs on a batch (made *before* the step that used
        that batch: prequential) and its targets. Returns the per-model losses (float64)."""
        losses = torch.stack([self.loss(out, y).detach().to(torch.float64) for out in outputs])
        return self.update_losses(losses, y)

    @torch.no_grad()
    def update_losses(self, losses: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Switch update from the models' batch-mean losses on the batch with targets ``y``
        (already computed by the caller); returns them as float64."""
        losses = losses.detach().to(torch.float64)
        scale = y.shape[0] if self.likelihood == "batch" and y.dim() > 0 else 1
        self.update_loglik(-losses * scale)
        return losses

    def forward(self, outputs: Sequence[torch.Tensor]):
        """Classification: log of the posterior-weighted mixture of the models' probabilities
        (``outputs`` are log-probabilities; feed the result to NLLLoss). Regression:
        ``(stack(outputs, -1), posterior)`` for ``L2LossAdditional``."""
        if self.task == "regression":
            return torch.stack(list(outputs), -1), self.posterior().to(outputs[0].dtype)
        if len(outputs) == 1:
            return outputs[0]
        stacked = torch.stack(list(outputs), -1)
        logpost = self.logposterior.to(stacked.dtype)
        return torch.logsumexp(stacked + logpost, -1)

    def extra_repr(self) -> str:
        return f"n_models={self.n_models}, theta={self.theta}, task={self.task!r}, likelihood={self.likelihood!r}"
