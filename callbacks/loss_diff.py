"""``LossDiffFinder``: autolrtuner's interface for a PyTorch model and a loader, through the
server's ``loss_diff`` tuner.

The server plans the LR grid and does the statistics; this object feeds it subsamples. It
drives an :class:`~autolrs.callbacks.AutoLRS` callback with a ``probe_fn`` over the current
subsample: each ``cb.step`` hands the next subsample to the next ``probe`` action (no training
step in between), and the results come back in the job's summary, with the goodbye reply. With
no ``server`` argument it runs on a private server started for it (``server="auto"``)::

    finder = LossDiffFinder(model, optimizer, criterion)
    finder.tune(train_loader, lr_min=1e-5, lr_max=1.0, num_evals=30, num_subsamples=30)
    lr = finder.get_best_lr("mean")         # or "median", "variance", "max"
    finder.plot(path="loss_diff.png")       # mean delta-loss and its t interval against the LR
    deltas = finder.get_results()           # (num_subsamples, num_evals) numpy array

Model and optimizer are bitwise as before the tune afterwards (the server restores its
checkpoint), with the best LR set if ``apply_best=True``; :meth:`reset` restores the state of
construction time.

``LossDiffTuner`` is this class's former name (the server's tuner class is called that too);
it still works, with a DeprecationWarning.
"""

from __future__ import annotations

import logging
import uuid
import warnings
from typing import Any, Iterable

import numpy as np
import torch

from autolrs import delta_stats
from autolrs.callbacks.callback import AutoLRS
from autolrs.callbacks.embedded import AUTO
from autolrs.callbacks.errors import AutoLRSWarning
from autolrs.callbacks.standalone import Batches, StandaloneTool, finish_axes, move_to_device, open_axes, progress_bar

log = logging.getLogger(__name__)

__all__ = ["LossDiffFinder", "plot_deltas"]


class LossDiffFinder(StandaloneTool):
    """autolrtuner's one-step loss differentials through an autolrs server (see the module doc).

    ``criterion(model(x), y)`` is the loss of a subsample (reduced to a scalar); ``device=None``
    works on the model's device. ``memory_cache=False`` keeps the checkpoints on disk in a
    private temp folder under ``cache_dir``. With ``include_rng`` the RNG states are part of
    each restore, so dropout draws the same masks in every probe.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        criterion: Any,
        server: str = AUTO,
        device: str | torch.device | None = None,
        *,
        memory_cache: bool = True,
        cache_dir: str | None = None,
        job: str | None = None,
        timeout: float = 5.0,
        include_rng: bool = False,
    ):
        super().__init__(
            model,
            optimizer,
            criterion,
            server,
            device,
            memory_cache=memory_cache,
            cache_dir=cache_dir,
            job=job,
            timeout=timeout,
            include_rng=include_rng,
        )
        #: The tuner's summary after :meth:`tune`: ``lrs``, ``deltas``, ``before``, ``stats``,
        #: ``best`` (every rule), ``best_lr`` (``method``'s), ``done``.
        self.summary: dict | None = None

    def tune(
        self,
        train_loader: Iterable,
        lr_min: float = 1e-6,
        lr_max: float = 1.0,
        num_evals: int = 30,
        num_subsamples: int = 30,
        batch_size: int | None = None,
        *,
        spacing: str = "log",
        alpha: float = 0.05,
        method: str = "mean",
        apply_best: bool = False,
        non_blocking_transfer: bool = True,
        progress: bool = True,
    ) -> float | None:
        """Probe ``num_evals`` LRs from ``lr_min`` to ``lr_max`` on ``num_subsamples`` subsamples
        and return the best LR of ``method`` (None when the rule finds none). A subsample is one
        batch of ``train_loader``, or with ``batch_size`` that many rows cut from its stream
        (batches of tensors only). ``progress=False`` hides the progress bar (tqdm, when
        installed; one tick per subsample)."""
        config = {
            "lr_min": float(lr_min),
            "lr_max": float(lr_max),
            "num_evals": int(num_evals),
            "num_subsamples": int(num_subsamples),
            "spacing": spacing,
            "alpha": float(alpha),
            "method": method,
            "apply_best": bool(apply_best),
        }
        subsamples = _Subsamples(train_loader, batch_size)
        current: dict[str, Any] = {}

        def probe_fn() -> torch.Tensor:
            return self.criterion(self.model(current["x"]), current["y"])

        self.summary = None
        self.model.to(self.device)
        self.model.train()
        job = self.job or f"loss-diff-{uuid.uuid4().hex[:12]}"
        with AutoLRS(
            self.model,
            self.optimizer,
            tuner="loss_diff",
            config=config,
            server=self.server,
            job=job,
            probe_fn=probe_fn,
            include_rng=self.include_rng,
            checkpoint=self.storage,
            checkpoint_dir=self.cache_dir,
            timeout=self.timeout,
        ) as cb:
            calls = 0
            bar = progress_bar(progress, int(num_subsamples), "loss_diff")
            try:
                # One step per subsample plus one; the bound matters only if the server stops answering.
                while not cb.should_stop and calls < 2 * int(num_subsamples) + 10:
                    x, y = subsamples.next()
                    current["x"] = move_to_device(x, self.device, non_blocking_transfer)
                    current["y"] = move_to_device(y, self.device, non_blocking_transfer)
                    cb.step(None)  # no training step: it only hands this subsample to the next probe
                    calls += 1
                    if calls > 1:  # the first step only starts the tune; each later one probed a subsample
                        bar.update(1)
            finally:
                bar.close()
            finished = cb.should_stop
            cb.close(timeout=self.timeout)  # its goodbye reply carries the job's summary
        summary = cb.summary
        if not finished or summary is None or summary.get("done") is None:
            self.reset()
            warnings.warn(
                f"autolrs: the loss_diff tune of job {job} did not finish on the server; the model and "
                "optimizer were reset to their initial state",
                AutoLRSWarning,
                stacklevel=2,
            )
            return None
        self.summary = summary
        log.info(
            "autolrs: loss_diff finished (%s, %d subsamples x %d LRs); best %s LR %s",
            summary["done"],
            summary["subsamples"],
            len(summary["lrs"]),
            method,
            summary["best_lr"],
        )
        return summary["best_lr"]

    # --- results ------------------------------------------------------------------------

    def _summary(self) -> dict:
        if self.summary is None:
            raise RuntimeError("no results: run tune() first")
        return self.summary

    def get_results(self) -> np.ndarray:
        """The loss differentials, shape (subsamples, LRs): ``after - before`` (``+inf``: diverged)."""
        s = self._summary()
        return delta_stats.as_matrix(s["deltas"], len(s["lrs"]))

    def get_best_lr(self, method: str = "mean") -> float | None:
        """The best LR by ``method`` (``mean``, ``median``, ``variance``, ``max``; see
        :func:`autolrs.delta_stats.best_lr`); None with a warning when no LR qualifies."""
        if method not in delta_stats.METHODS:
            raise ValueError(f"method must be one of {delta_stats.METHODS}, got {method!r}")
        return delta_stats.warn_if_none(self._summary()["best"][method], method)

    def statistics(self, alpha: float | None = None) -> dict[str, list[float]]:
        """Per-LR ``mean``, ``median``, ``std``, t interval ``ci_low``/``ci_high``, ``n``; the
        server's at the tune's ``alpha``, recomputed for another one."""
        s = self._summary()
        if alpha is None or alpha == s["alpha"]:
            return s["stats"]
        return delta_stats.statistics(self.get_results(), alpha)

    def plot(
        self,
        path: str | None = None,
        *,
        alpha: float | None = None,
        method: str | None = None,
        ax: Any = None,
        trim: float = 0.05,
        xlim: tuple[float, float] | None = None,
    ):
        """Mean loss differential against the LR with its t interval (see :func:`plot_deltas`)."""
        s = self._summary()
        method = method or s["method"]
        return plot_deltas(
            s["lrs"],
            self.statistics(alpha),
            log_lr=s["spacing"] == "log",
            best=s["best"][method]["lr"],
            method=method,
            ax=ax,
            path=path,
            trim=trim,
            xlim=xlim,
            alpha=s["alpha"] if alpha is None else alpha,
        )


def plot_deltas(
    lrs: Any,
    stats: dict,
    *,
    log_lr: bool = True,
    best: float | None = None,
    method: str = "mean",
    ax: Any = None,
    path: str | None = None,
    trim: float = 0.05,
    xlim: tuple[float, float] | None = None,
    alpha: float = 0.05,
):
    """autolrtuner's plot: the mean loss differential per LR with its t interval as a band, a
    dashed zero line and ``best`` marked. The y-range spans the ``trim`` and ``1 - trim``
    quantiles of the band's ends, its top capped at twice the depth of its bottom (losses after
    a step at the largest LRs can be orders of magnitude above the dip). ``path`` saves a PNG on
    an Agg canvas (nothing is shown); without ``path`` or ``ax`` the figure is shown. Returns ``ax``."""
    if not 0 <= trim < 0.5:
        raise ValueError(f"trim must be in [0, 0.5), got {trim!r}")
    x = np.asarray(lrs, dtype=float)
    mean, low, high = (_finite_or_nan(stats[k]) for k in ("mean", "ci_low", "ci_high"))
    if xlim is not None:
        keep = (x >= xlim[0]) & (x <= xlim[1])
        x, mean, low, high = x[keep], mean[keep], low[keep], high[keep]
    ax, show = open_axes(ax, path)
    ax.plot(x, mean, label="mean")
    ax.fill_between(x, low, high, color="tab:orange", alpha=0.3, label=f"{100 * (1 - alpha):g}% t interval")
    ax.axhline(0.0, color="black", linestyle="--", linewidth=1)
    if best is not None and x.size and np.any(x == best):
        i = int(np.flatnonzero(x == best)[0])
        ax.scatter([best], [mean[i]], s=75, color="red", zorder=3, label=f"{method}: {best:.2E}")
    low_f, high_f = low[np.isfinite(low)], high[np.isfinite(high)]
    if low_f.size and high_f.size:
        lo, hi = np.quantile(low_f, trim), np.quantile(high_f, 1 - trim)
        if lo < 0:  # keep the dip visible: the LRs past it rise off the top of the axes
            hi = min(hi, -2 * lo)
        if lo < hi:
            pad = 0.05 * (hi - lo)
            ax.set_ylim(lo - pad, hi + pad)
    if log_lr:
        ax.set_xscale("log")
    if xlim is not None:
        ax.set_xlim(*xlim)
    ax.set_title("Estimated loss differentials")
    ax.set_xlabel("Learning rate")
    ax.set_ylabel("Change in loss after one step")
    ax.legend()
    finish_axes(ax, path, show)
    return ax


def _finite_or_nan(values: Any) -> np.ndarray:
    a = np.asarray(values, dtype=float)
    return np.where(np.isfinite(a), a, np.nan)


class _Subsamples:
    """Endless subsamples from a loader: its batches as they come, or with ``batch_size`` rows
    re-cut from its stream (inputs and labels must then be tensors)."""

    def __init__(self, loader: Iterable, batch_size: int | None):
        if batch_size is not None and (
            not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1
        ):
            raise ValueError(f"batch_size must be an integer >= 1 or None, got {batch_size!r}")
        self.batches = Batches(loader)
        self.batch_size = batch_size
        self._x: list[torch.Tensor] = []
        self._y: list[torch.Tensor] = []
        self._rows = 0

    def next(self) -> tuple[Any, Any]:
        if self.batch_size is None:
            return self.batches.next()
        while self._rows < self.batch_size:
            x, y = self.batches.next()
            if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or len(x) != len(y) or not len(x):
                raise ValueError(
                    "batch_size re-cuts the loader's batches, which must be (inputs, labels) tensors "
                    "with the same, non-zero number of rows"
                )
            self._x.append(x)
            self._y.append(y)
            self._rows += len(x)
        x, y = torch.cat(self._x), torch.cat(self._y)
        n = self.batch_size
        self._x, self._y, self._rows = [x[n:]], [y[n:]], len(x) - n
        return x[:n], y[:n]


#: The warning the former name ``LossDiffTuner`` gives.
RENAMED = "autolrs.callbacks.LossDiffTuner is now LossDiffFinder; the old name will be removed"


def __getattr__(name: str):
    if name == "LossDiffTuner":
        warnings.warn(RENAMED, DeprecationWarning, stacklevel=2)
        return LossDiffFinder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
