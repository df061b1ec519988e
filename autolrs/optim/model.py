"""``AlraoModel``: a pre-classifier followed by N classifier copies averaged by a Switch."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

from autolrs.optim.switch import Switch

__all__ = ["AlraoModel"]

_BARS = " ▁▂▃▄▅▆▇█"


class AlraoModel(nn.Module):
    """``AlraoModel(task, loss, preclassifier, n_classifiers, classifier_factory, *args, **kwargs)``

    - ``task``: 'classification' (copies return log-probabilities; the output is the log of the
      posterior-weighted mixture, to be fed to NLLLoss) or 'regression' (the output is
      ``(stacked predictions [..., N], posterior)`` for ``L2LossAdditional``).
    - ``loss``: per-copy loss, used to train each copy and to update the Switch (NLLLoss for
      classification, ``L2LossLog`` for regression); must be averaged over the batch.
    - ``preclassifier``: any module; if it returns a tuple ``(x, a, b, ...)``, ``x`` feeds the
      copies and the model returns ``(mixture, a, b, ...)`` (e.g. an RNN's hidden state).
    - ``classifier_factory(*args, **kwargs)`` builds one copy; ``n_classifiers`` are built.
    - ``theta`` (Switch prior on not switching, default 0.9999), ``likelihood`` ('mean', the
      original's and the default, or 'batch', see ``Switch``), ``check_finite`` (raise ValueError on non-finite
      features, as the original; costs a device sync per forward) are keyword-only knobs and are
      not passed to the factory.

    Train with ``AlraoSGD``/``AlraoAdam`` and ``alrao_step`` (``autolrs.optim.optimizers``).
    """

    def __init__(
        self,
        task: str,
        loss: Callable,
        preclassifier: nn.Module,
        n_classifiers: int,
        classifier_factory: Callable[..., nn.Module],
        *args,
        theta: float = 0.9999,
        likelihood: str = "mean",
        check_finite: bool = True,
        **kwargs,
    ):
        super().__init__()
        self.task = task
        self.loss = loss
        self.preclassifier = preclassifier
        self.classifiers = nn.ModuleList(classifier_factory(*args, **kwargs) for _ in range(n_classifiers))
        self.switch = Switch(n_classifiers, theta=theta, task=task, loss=loss, likelihood=likelihood)
        self.check_finite = check_finite
        # The latest batch's features and copies' outputs, detached: alrao_step trains the copies
        # on these and updates the Switch with the pre-step (prequential) predictions.
        self.last_x: torch.Tensor | None = None
        self.last_outputs: list[torch.Tensor] | None = None

    @property
    def n_classifiers(self) -> int:
        return len(self.classifiers)

    def forward(self, *args, **kwargs):
        x = self.preclassifier(*args, **kwargs)
        extra = None
        if isinstance(x, tuple):
            x, extra = x[0], x[1:]
        if self.check_finite and not torch.isfinite(x).all():
            raise ValueError(
                "the pre-classifier produced non-finite features (lr_max too large for this architecture?)"
            )
        outputs = [c(x) for c in self.classifiers]
        self.last_x = x.detach()
        self.last_outputs = [o.detach() for o in outputs]
        out = self.switch(outputs)
        return out if extra is None else (out,) + tuple(extra)

    @torch.no_grad()
    def update_switch(self, y: torch.Tensor, x: torch.Tensor | None = None, catch_up: bool = False) -> torch.Tensor:
        """Update the Switch posterior with the stored outputs of the last forward (or with the
        copies' outputs on features ``x``); returns the per-copy losses."""
        outputs = [c(x) for c in self.classifiers] if x is not None else self.last_outputs
        if outputs is None:
            raise RuntimeError("update_switch before any forward")
        losses = self.switch.update(outputs, y)
        if catch_up:
            self.hard_catch_up()
        return losses

    def posterior(self) -> torch.Tensor:
        return self.switch.posterior()

    @torch.no_grad()
    def hard_catch_up(self, threshold: float = -20.0) -> int:
        """Every copy whose log-posterior is below ``threshold`` gets the posterior-weighted
        average of all copies' parameters (all of them, not only a ``.fc`` as the original).
        Returns how many copies were overwritten."""
        logpost = self.switch.logposterior
        behind = [k for k in range(self.n_classifiers) if logpost[k].item() < threshold]
        if not behind:
            return 0
        post = self.posterior()
        params = [list(c.parameters()) for c in self.classifiers]
        for i in range(len(params[0])):
            avg = sum(post[k].to(params[k][i].dtype) * params[k][i] for k in range(self.n_classifiers))
            assert isinstance(avg, torch.Tensor)  # n_classifiers >= 1
            for k in behind:
                params[k][i].copy_(avg)
        return len(behind)

    def preclassifier_parameters(self) -> Iterator[nn.Parameter]:
        return self.preclassifier.parameters()

    def classifiers_parameters_list(self) -> list[list[nn.Parameter]]:
        return [list(c.parameters()) for c in self.classifiers]

    def reset_parameters(self) -> None:
        """Re-initialise every layer that can, and the Switch."""
        for m in self.modules():
            reset = getattr(m, "reset_parameters", None)
            if m is not self and callable(reset):
                reset()
        self.switch.reset()

    def method_fwd_preclassifier(self, src: str, dst: str | None = None) -> None:
        """Make ``self.<dst or src>(...)`` call ``self.preclassifier.<src>(...)`` (e.g. an RNN's
        ``init_hidden``)."""
        dst = dst or src
        self._check_free(dst)
        object.__setattr__(self, dst, lambda *a, **kw: getattr(self.preclassifier, src)(*a, **kw))

    def method_fwd_classifiers(self, src: str, dst: str | None = None) -> None:
        """Make ``self.<dst or src>(...)`` call ``<src>`` on every copy and return the list of
        results."""
        dst = dst or src
        self._check_free(dst)
        object.__setattr__(self, dst, lambda *a, **kw: [getattr(c, src)(*a, **kw) for c in self.classifiers])

    def _check_free(self, name: str) -> None:
        # Checks the destination name (the original checked the source by mistake).
        if hasattr(self, name):
            raise AttributeError(f"AlraoModel already has an attribute {name!r}")

    def repr_posterior(self) -> str:
        """The posterior as a sparkline, normalised by its maximum."""
        post = self.posterior()
        top = post.max().item() or 1.0
        return "".join(_BARS[min(8, int(round(8 * v / top)))] for v in post.tolist())
