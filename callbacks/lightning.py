"""AutoLRS for Lightning: a ``Callback`` for ``lightning`` (``lightning.pytorch``) or
``pytorch_lightning``, whichever is installed (``lightning`` first; both Trainers accept it)::

    from autolrs.callbacks.lightning import AutoLRSCallback

    trainer = Trainer(max_epochs=10, callbacks=[AutoLRSCallback(tuner="auto")])
    trainer.fit(model, train_loader, val_loader)

A thin shell over :class:`~autolrs.callbacks.AutoLRS`, built when training starts:

* the optimizer is the trainer's (one; ``configure_optimizers`` must not return an LR
  scheduler: the tuner sets the LR, and a scheduler would fight it, so one is refused with a
  clear error before the first step);
* the step budget (``max_steps``) is the trainer's ``max_steps``, else its estimated number of
  optimizer steps; the loss of a step is ``outputs["loss"]`` of ``on_train_batch_end`` (what
  ``training_step`` returned), summed over the micro-batches of an accumulated step (Lightning
  divides each by ``accumulate_grad_batches``, so the sum is their mean), and the tuner counts
  optimizer steps (``trainer.global_step``), not batches;
* under the DDP strategy every rank runs the callback and rank 0 talks to the server (the
  callback's own DDP support, see :mod:`autolrs.callbacks.distributed`);
* a tuner that asks for a validation loss gets the trainer's validation: its validation loop
  is run (every rank, as Lightning does) and the logged ``monitor`` metric (default
  ``"val_loss"``) is the loss. Everything that happens at a validation happens then (metrics
  are logged; callbacks such as ``ModelCheckpoint`` and ``EarlyStopping`` see it). Give
  ``val_fn=`` to evaluate otherwise, or ``val=False`` for none;
* its state (:meth:`AutoLRS.state_dict`) is saved in Lightning checkpoints, and a run resumed
  with ``trainer.fit(..., ckpt_path=...)`` continues the same tuning job at the checkpoint's
  step;
* ``should_stop`` from the tuner stops the trainer; the job ends (goodbye) when training ends,
  and stays open when it stops on an exception (an interrupt, a crash), so that a run resumed
  from a checkpoint continues it.

The remaining keyword arguments go to :class:`AutoLRS` (``timeout``, ``checkpoint``,
``include_rng``, ``seed``, ``secret``, ...). The live callback is :attr:`AutoLRSCallback.autolrs`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any, Callable

import torch

try:  # the unified package first, then the standalone one
    from lightning.pytorch import Callback
except ImportError:  # pragma: no cover - depends on what is installed
    try:
        from pytorch_lightning import Callback  # type: ignore[assignment]  # the same class, older package
    except ImportError:
        raise ImportError(
            "autolrs.callbacks.lightning needs Lightning: pip install lightning (or pytorch_lightning)"
        ) from None

from autolrs.callbacks.callback import AutoLRS
from autolrs.callbacks.embedded import AUTO
from autolrs.callbacks.errors import WarnOnce

log = logging.getLogger(__name__)

__all__ = ["AutoLRSCallback"]


class AutoLRSCallback(Callback):
    """Learning-rate tuning by an autolrs server inside ``Trainer.fit`` (see the module doc).

    ``tuner``, ``config``, ``server`` (default ``"auto"``), ``job`` and ``max_steps`` (default:
    the trainer's budget) are :class:`AutoLRS`'s. ``val``: give tuners the trainer's
    validation (default True; it needs a ``validation_step`` and validation data); ``monitor``:
    the logged metric read as the validation loss; ``val_fn``: a function of your own instead.
    """

    def __init__(
        self,
        tuner: str = "auto",
        config: dict | None = None,
        *,
        server: str = AUTO,
        job: str | None = None,
        max_steps: int | None = None,
        val: bool = True,
        monitor: str = "val_loss",
        val_fn: Callable[[], Any] | None = None,
        **autolrs_options: Any,
    ):
        super().__init__()
        if "distributed" in autolrs_options:
            raise ValueError("AutoLRSCallback follows the trainer's strategy: do not pass distributed=")
        self.tuner, self.config, self.server, self.job = tuner, config, server, job
        self.max_steps, self.val, self.monitor, self.val_fn = max_steps, val, monitor, val_fn
        self.options = autolrs_options
        #: The :class:`AutoLRS` of the current ``fit`` (None outside of training).
        self.autolrs: AutoLRS | None = None
        self._restored: dict | None = None
        self._loss: torch.Tensor | None = None
        self._seen_step = 0
        self._warn = WarnOnce()

    # --- training -------------------------------------------------------------------------

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        optimizer = _the_optimizer(trainer)
        restored, self._restored = self._restored, None
        job = self.job or (restored or {}).get("job")
        self.autolrs = AutoLRS(
            pl_module,
            optimizer,
            tuner=self.tuner,
            config=self.config,
            server=self.server,
            job=job,
            val_fn=self._validation(trainer, pl_module),
            max_steps=self.max_steps or _budget(trainer),
            scaler=getattr(trainer.precision_plugin, "scaler", None),
            **self.options,
        )
        if restored:
            self.autolrs.load_state_dict(restored)
        self._seen_step = trainer.global_step
        self._loss = None

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.autolrs is None:
            return
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, torch.Tensor):
            loss = loss.detach()
            self._loss = loss if self._loss is None else self._loss + loss
        if trainer.global_step == self._seen_step:
            return  # accumulating gradients: no optimizer step yet
        self._seen_step = trainer.global_step
        step_loss, self._loss = self._loss, None
        self.autolrs.step(step_loss)
        if self.autolrs.should_stop:
            trainer.should_stop = True

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._close("done")

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        # Interrupted, preempted or crashed: the job stays open, to be resumed from a checkpoint.
        if self.autolrs is not None:
            self.autolrs.close("error", end_job=False)

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._close("done")

    def _close(self, reason: str) -> None:
        if self.autolrs is not None:
            self.autolrs.close(reason)

    # --- checkpoints ----------------------------------------------------------------------

    def state_dict(self) -> dict:
        """The live job's :meth:`AutoLRS.state_dict` (empty before training starts)."""
        if self.autolrs is not None:
            return self.autolrs.state_dict()
        return dict(self._restored or {})

    def load_state_dict(self, state_dict: dict) -> None:
        """Kept until training starts: the job is resumed at the checkpoint's step then."""
        self._restored = dict(state_dict) if state_dict else None

    # --- validation -----------------------------------------------------------------------

    def _validation(self, trainer: Any, pl_module: Any) -> Callable[[], float] | None:
        if self.val_fn is not None:
            return self.val_fn
        if not self.val or not _overrides(pl_module, "validation_step"):
            return None
        if not trainer.fit_loop.epoch_loop.val_loop._data_source.is_defined() or trainer.limit_val_batches == 0:
            return None
        return lambda: self._run_validation(trainer)

    def _run_validation(self, trainer: Any) -> float:
        """The trainer's validation loop, run now; the logged ``monitor`` value. Done as
        Lightning's own training loop does between two batches."""
        loop = trainer.fit_loop.epoch_loop.val_loop
        connector = trainer._logger_connector
        first_loop_iter = connector._first_loop_iter
        trainer.validating = True
        try:
            loop.run()
        finally:
            trainer.training = True
            connector._first_loop_iter = first_loop_iter
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            self._warn(
                "monitor",
                (
                    f"autolrs: the tuner asked for a validation loss, but the validation logged no "
                    f"{self.monitor!r} (AutoLRSCallback(monitor=...) names the metric); reporting NaN"
                ),
            )
            return math.nan
        return float(value)


def _the_optimizer(trainer: Any) -> torch.optim.Optimizer:
    if trainer.lr_scheduler_configs:
        names = ", ".join(type(c.scheduler).__name__ for c in trainer.lr_scheduler_configs)
        raise ValueError(
            f"AutoLRSCallback sets the learning rate itself, but configure_optimizers also returned an "
            f"LR scheduler ({names}), which would fight it: return only the optimizer"
        )
    if len(trainer.optimizers) != 1:
        raise ValueError(
            f"AutoLRSCallback tunes one optimizer; configure_optimizers returned {len(trainer.optimizers)}"
        )
    return trainer.optimizers[0]


def _budget(trainer: Any) -> int | None:
    """The trainer's optimizer steps: ``max_steps`` if set, else the estimate from epochs."""
    if trainer.max_steps is not None and trainer.max_steps > 0:
        return int(trainer.max_steps)
    try:
        steps = trainer.estimated_stepping_batches
    except Exception:  # noqa: BLE001 - an iterable without a length: the budget is unknown
        return None
    return int(steps) if isinstance(steps, (int, float)) and math.isfinite(steps) and steps > 0 else None


def _overrides(module: Any, name: str) -> bool:
    method = getattr(type(module), name, None)
    for base in type(module).__mro__[1:]:
        if base.__name__ == "LightningModule":
            return method is not None and method is not getattr(base, name, None)
    return method is not None
