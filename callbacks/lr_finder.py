"""``LRFinder``: torch-lr-finder's interface, for when there is no training loop to plug into.

It drives its own loop through an :class:`~autolrs.callbacks.AutoLRS` callback with
``tuner="range_test"``: the server plans the sweep, smooths the loss, detects divergence and
suggests; the finder trains one (possibly accumulated) batch per ``cb.step`` and reads the
curve from the job's summary, which the server's goodbye reply carries. With nothing running
and no ``server`` argument, the test runs on a private server started for it (``server="auto"``,
see :mod:`autolrs.callbacks.embedded`) and stopped afterwards, as torch-lr-finder needs no
extra process::

    finder = LRFinder(model, optimizer, criterion)
    finder.range_test(train_loader, end_lr=10, num_iter=100)
    lr = finder.suggestion("valley")
    finder.plot(path="lr_finder.png")      # headless: saves a PNG
    finder.reset()                         # model and optimizer exactly as before the test

Differences from torch-lr-finder: the server restores the model and optimizer as soon as the
sweep ends (``reset()`` still restores the state of construction time, bitwise, including the
LRs); with several param groups each keeps its ratio to group 0 throughout the sweep (torch-
lr-finder ramps every group to the same ``end_lr``); a step the GradScaler skipped does not
advance the LR and is not recorded; suggestions return None (with the reason in
``last_suggestion``) instead of raising when the curve is too short.
"""

from __future__ import annotations

import logging
import uuid
import warnings
from typing import Any, Iterable

import torch

from autolrs import lr_curve
from autolrs.callbacks.callback import AutoLRS
from autolrs.callbacks.embedded import AUTO
from autolrs.callbacks.errors import AutoLRSWarning
from autolrs.callbacks.lr import scheduler_attached, write_lrs
from autolrs.callbacks.standalone import (
    Batches,
    StandaloneTool,
    finish_axes,
    inputs_labels,
    model_device,
    move_to_device,
    open_axes,
    progress_bar,
)

log = logging.getLogger(__name__)

__all__ = ["LRFinder"]


class LRFinder(StandaloneTool):
    """LR range test through an autolrs server (see the module doc).

    ``device=None`` trains on the model's device. ``grad_scaler`` (a GradScaler) with
    ``amp_config`` (kwargs of ``torch.autocast``, e.g. ``{"device_type": "cuda", "dtype":
    torch.float16}``) trains in mixed precision. ``memory_cache=False`` keeps the snapshots on
    disk in a private temp folder under ``cache_dir``, removed by :meth:`close`.
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
        grad_scaler: Any = None,
        amp_config: dict | None = None,
        job: str | None = None,
        timeout: float = 5.0,
        include_rng: bool = False,
    ):
        _check_no_scheduler(optimizer)
        if grad_scaler is not None and amp_config is None:
            amp_config = {"device_type": model_device(model).type, "dtype": torch.float16}
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
            grad_scaler=grad_scaler,
        )
        self.grad_scaler = grad_scaler
        self.amp_config = amp_config
        self.history: dict[str, list[float]] = {"lr": [], "loss": []}
        self.best_loss: float | None = None
        self._smooth_f = 0.05  # of the last test: the suggestions' bias-corrected curve uses it
        #: The tuner's summary at the end of the last test (history, suggestions, why it ended).
        self.summary: dict | None = None
        #: The dict of the last :meth:`suggestion` (``lr``, ``index``, ``loss``, ``reason``).
        self.last_suggestion: dict | None = None

    # --- the test -----------------------------------------------------------------------

    def range_test(
        self,
        train_loader: Iterable,
        val_loader: Iterable | None = None,
        start_lr: Any = None,
        end_lr: float = 10,
        num_iter: int = 100,
        step_mode: str = "exp",
        smooth_f: float = 0.05,
        diverge_th: float | None = 5,
        accumulation_steps: int = 1,
        non_blocking_transfer: bool = True,
        *,
        chunk: int = 10,
        method: str = lr_curve.DEFAULT_METHOD,
        progress: bool = True,
    ) -> None:
        """Sweep the LR from ``start_lr`` (default: each group's current LR) to ``end_lr`` over
        ``num_iter`` optimizer steps; with ``val_loader`` each point is a full validation pass.
        Fills :attr:`history` (``lr``, ``loss`` smoothed as in torch-lr-finder, ``raw_loss``).
        ``progress=False`` hides the progress bar (tqdm, when installed)."""
        if num_iter <= 1:
            raise ValueError("`num_iter` must be larger than 1")
        if str(step_mode).lower() not in lr_curve.STEP_MODES:
            raise ValueError(f"expected one of (exp, linear), got {step_mode}")
        if not 0 <= smooth_f < 1:
            raise ValueError("smooth_f is outside the range [0, 1)")
        if not isinstance(accumulation_steps, int) or accumulation_steps < 1:
            raise ValueError(f"accumulation_steps must be an integer >= 1, got {accumulation_steps!r}")
        _check_no_scheduler(self.optimizer)
        self.history = {"lr": [], "loss": []}
        self.best_loss = None
        self.summary = None
        self._smooth_f = float(smooth_f)
        self.model.to(self.device)
        if start_lr:
            self._set_start_lrs(start_lr)
        config = {
            "end_lr": float(end_lr),
            "num_iter": int(num_iter),
            "step_mode": str(step_mode).lower(),
            "smooth_f": float(smooth_f),
            "diverge_th": None if diverge_th is None else float(diverge_th),
            "val": val_loader is not None,
            "chunk": int(chunk),
            "method": method,
        }
        val_fn = None if val_loader is None else (lambda: self._validate(val_loader, non_blocking_transfer))
        job = self.job or f"lr-finder-{uuid.uuid4().hex[:12]}"
        batches = Batches(train_loader)
        with AutoLRS(
            self.model,
            self.optimizer,
            tuner="range_test",
            config=config,
            server=self.server,
            job=job,
            val_fn=val_fn,
            scaler=self.grad_scaler,
            include_rng=self.include_rng,
            checkpoint=self.storage,
            checkpoint_dir=self.cache_dir,
            timeout=self.timeout,
        ) as cb:
            calls = 0
            bar = progress_bar(progress, int(num_iter), "range test")
            try:
                # The server stops the test after num_iter steps; the bound only matters when it
                # stops answering (then training would go on at a fixed LR) or every step overflows.
                while not cb.should_stop and cb.global_step < num_iter and calls < 2 * num_iter + 10:
                    loss = self._train_batch(batches, accumulation_steps, non_blocking_transfer)
                    calls += 1
                    done = cb.global_step
                    cb.step(loss)
                    bar.update(cb.global_step - done)
            finally:
                bar.close()
            finished = cb.should_stop
            cb.close(timeout=self.timeout)  # its goodbye reply carries the job's summary
        summary = cb.summary
        if not finished or summary is None:
            # The server never closed the sweep (it stopped answering): put everything back.
            self.reset()
            warnings.warn(
                f"autolrs: the range test of job {job} did not finish on the server; the model and "
                "optimizer were reset to their initial state",
                AutoLRSWarning,
                stacklevel=2,
            )
        if summary is not None:
            self.summary = summary
            hist = summary.get("history") or {}
            self.history = {
                "lr": list(hist.get("lr", [])),
                "loss": list(hist.get("smoothed", [])),
                "raw_loss": list(hist.get("loss", [])),
            }
            self.best_loss = summary.get("best_loss")
            log.info(
                "autolrs: learning rate search finished (%s, %d points); see LRFinder.plot()",
                summary.get("done"),
                len(self.history["lr"]),
            )

    def _set_start_lrs(self, start_lr: Any) -> None:
        groups = self.optimizer.param_groups
        if isinstance(start_lr, (list, tuple)):
            if len(start_lr) != len(groups):
                raise ValueError(
                    f"length of `start_lr` ({len(start_lr)}) does not match the number of param groups ({len(groups)})"
                )
            values = [float(v) for v in start_lr]
        else:
            values = [float(start_lr)] * len(groups)
        write_lrs(self.optimizer, values)

    def _train_batch(self, batches: Batches, accumulation_steps: int, non_blocking: bool) -> torch.Tensor:
        self.model.train()
        self.optimizer.zero_grad()
        total = None
        for _ in range(accumulation_steps):
            inputs, labels = batches.next()
            inputs = move_to_device(inputs, self.device, non_blocking)
            labels = move_to_device(labels, self.device, non_blocking)
            if self.grad_scaler is not None:
                with torch.autocast(**self.amp_config):
                    loss = self.criterion(self.model(inputs), labels)
                loss = loss / accumulation_steps
                self.grad_scaler.scale(loss).backward()
            else:
                loss = self.criterion(self.model(inputs), labels) / accumulation_steps
                loss.backward()
            total = loss.detach() if total is None else total + loss.detach()
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()
        return total

    def _validate(self, val_loader: Iterable, non_blocking: bool) -> float:
        was_training = self.model.training
        self.model.eval()
        running, count = 0.0, 0
        with torch.no_grad():
            for batch in val_loader:
                inputs, labels = inputs_labels(batch)
                inputs = move_to_device(inputs, self.device, non_blocking)
                labels = move_to_device(labels, self.device, non_blocking)
                n = len(labels)
                running += float(self.criterion(self.model(inputs), labels)) * n
                count += n
        self.model.train(was_training)
        return running / count if count else float("nan")

    # --- results ------------------------------------------------------------------------

    def suggestion(
        self,
        method: str = lr_curve.DEFAULT_METHOD,
        skip_start: int | None = None,
        skip_end: int | None = None,
        curve: str = "debiased",
        **kwargs,
    ) -> float | None:
        """The suggested LR of ``method`` (default :data:`autolrs.lr_curve.DEFAULT_METHOD`;
        ``steepest``, ``valley``, ``minimum``), or None when the
        curve is too short (the reason is in ``last_suggestion``). ``curve="debiased"`` (default)
        applies the rule to the bias-corrected smoothing of the raw losses
        (:func:`autolrs.lr_curve.debiased`); ``curve="smoothed"`` to ``history["loss"]``, which
        with ``method="steepest", wrt="index"`` is torch-lr-finder's exact suggestion."""
        skips = {k: v for k, v in (("skip_start", skip_start), ("skip_end", skip_end)) if v is not None}
        result = lr_curve.suggest(self.history["lr"], self._rule_curve(curve), method, **skips, **kwargs)
        self.last_suggestion = result
        if result["lr"] is None:
            log.info("autolrs: no %s suggestion: %s", method, result["reason"])
        return result["lr"]

    def _rule_curve(self, curve: str) -> list[float]:
        if curve == "smoothed":
            return self.history["loss"]
        if curve == "debiased":
            return lr_curve.debiased(self.history.get("raw_loss", []), self._smooth_f)
        raise ValueError(f"curve must be 'debiased' or 'smoothed', got {curve!r}")

    def bounds(self, min_decades: float = 1.0) -> tuple[float, float]:
        """The LR interval the curve supports (:func:`autolrs.lr_curve.bounds_from_curve`): the
        AutoLRS search interval, or with a wider ``min_decades`` an Alrao interval."""
        return lr_curve.bounds_from_curve(self.history["lr"], self.history["raw_loss"], min_decades=min_decades)

    def plot(
        self,
        skip_start: int = 10,
        skip_end: int = 5,
        log_lr: bool = True,
        show_lr: float | None = None,
        ax: Any = None,
        suggest_lr: bool = True,
        method: str = lr_curve.DEFAULT_METHOD,
        path: str | None = None,
    ):
        """Loss versus LR (see :func:`plot_curve`) of this finder's history; the suggestion is
        :meth:`suggestion`'s (on the bias-corrected curve), marked on the plotted curve."""
        out = plot_curve(
            self.history["lr"],
            self.history["loss"],
            skip_start=skip_start,
            skip_end=skip_end,
            log_lr=log_lr,
            show_lr=show_lr,
            ax=ax,
            suggest_lr=suggest_lr,
            method=method,
            path=path,
            rule_losses=self._rule_curve("debiased"),
        )
        if suggest_lr:
            self.last_suggestion = out[2]
            return out[0], out[1]
        return out


# --- helpers -------------------------------------------------------------------------------


def plot_curve(
    lrs: Any,
    losses: Any,
    *,
    skip_start: int = 10,
    skip_end: int = 5,
    log_lr: bool = True,
    show_lr: float | None = None,
    ax: Any = None,
    suggest_lr: bool = True,
    method: str = "steepest",
    path: str | None = None,
    rule_losses: Any = None,
):
    """Loss versus LR (log x-axis by default) without the first ``skip_start`` and last
    ``skip_end`` points, the suggestion of ``method`` marked in red. ``path`` saves a PNG
    (with the Agg canvas when the figure is made here: nothing is shown). Returns
    ``(ax, lr, suggestion)`` with ``suggest_lr``, else ``ax``. ``rule_losses``: the curve the
    suggestion is computed on, when not the plotted one (same length)."""
    if skip_start < 0 or skip_end < 0:
        raise ValueError("skip_start and skip_end cannot be negative")
    if show_lr is not None and not isinstance(show_lr, float):
        raise ValueError("show_lr must be float")
    all_lrs, all_losses = list(lrs), list(losses)
    end = len(all_lrs) - skip_end
    shown_lrs, shown_losses = all_lrs[skip_start:end], all_losses[skip_start:end]
    suggested = result = None
    if suggest_lr:
        rule = all_losses if rule_losses is None else list(rule_losses)
        result = lr_curve.suggest(all_lrs, rule, method, skip_start=skip_start, skip_end=skip_end)
        if result["lr"] is None:
            raise RuntimeError(f"cannot suggest a learning rate ({method}): {result['reason']}")
        suggested = result["lr"]

    ax, show = open_axes(ax, path)
    ax.plot(shown_lrs, shown_losses)
    if suggested is not None:
        i = result["index"]
        ax.scatter(
            all_lrs[i], all_losses[i], s=75, marker="o", color="red", zorder=3, label=f"{method}: {suggested:.2E}"
        )
        ax.legend()
    if log_lr:
        ax.set_xscale("log")
    ax.set_xlabel("Learning rate")
    ax.set_ylabel("Loss")
    if show_lr is not None:
        ax.axvline(x=show_lr, color="red")
    finish_axes(ax, path, show)
    return (ax, suggested, result) if suggest_lr else ax


def _check_no_scheduler(optimizer: torch.optim.Optimizer) -> None:
    if scheduler_attached(optimizer):  # torch-lr-finder's error and message
        raise RuntimeError("Optimizer already has a scheduler attached to it")
