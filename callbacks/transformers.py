"""AutoLRS for Hugging Face ``transformers.Trainer``: a ``TrainerCallback``::

    from autolrs.callbacks.transformers import AutoLRSCallback

    args = TrainingArguments(..., lr_scheduler_type="constant")   # the tuner sets the LR
    trainer = Trainer(model=model, args=args, train_dataset=data,
                      callbacks=[AutoLRSCallback(tuner="auto")])
    trainer.train()

A thin shell over :class:`~autolrs.callbacks.AutoLRS`, built when training begins, with the
Trainer's optimizer, its model, and its step budget (``state.max_steps``).

**The step's loss.** A Trainer's callbacks are not given the loss, so this one reads it where
the model hands it over: a forward hook on the model keeps ``outputs.loss`` of every forward in
training mode (a ``ModelOutput`` or a dict with ``"loss"``, as Hugging Face models return when
the batch has labels), and at each optimizer step (``on_step_end``) passes the step's loss to
the tuner: the sum of its micro-batches' losses when the model was given ``num_items_in_batch``
(each is then its share of the step's token mean), else their mean; so with gradient
accumulation it is the same number the Trainer logs as ``loss``, one per optimizer step. A
``compute_loss`` of your own that computes the loss outside the model calls
:meth:`AutoLRSCallback.record_loss` with it instead.

**The Trainer's scheduler.** The Trainer always builds an LR scheduler and steps it after every
optimizer step. Set ``lr_scheduler_type="constant"`` (any other is refused with a clear error
when training begins): its ``LambdaLR`` writes ``base_lrs`` back each step, and the callback
keeps ``base_lrs`` (and ``get_last_lr()``) equal to the LRs the tuner set, so the scheduler
writes back the tuner's LRs, and the Trainer logs the LR of each step as ``learning_rate``,
instead of fighting them.

``val_fn=`` gives tuners that ask for a validation loss a function of yours (the Trainer's
evaluation is not reachable from a callback). Under DDP every rank runs the callback and rank 0
talks to the server. The callback's state is not part of the Trainer's checkpoints: a run
resumed with ``resume_from_checkpoint`` starts a new tuning job.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

try:
    from transformers import TrainerCallback
except ImportError:  # pragma: no cover - depends on what is installed
    raise ImportError("autolrs.callbacks.transformers needs transformers: pip install transformers") from None

from autolrs.callbacks.callback import AutoLRS
from autolrs.callbacks.embedded import AUTO
from autolrs.callbacks.errors import WarnOnce

log = logging.getLogger(__name__)

__all__ = ["AutoLRSCallback"]


class AutoLRSCallback(TrainerCallback):
    """Learning-rate tuning by an autolrs server inside ``Trainer.train`` (see the module doc).

    ``tuner``, ``config``, ``server`` (default ``"auto"``), ``job``, ``max_steps`` (default:
    the Trainer's) and ``val_fn`` are :class:`AutoLRS`'s; the remaining keyword arguments go to
    it too (``timeout``, ``checkpoint``, ``include_rng``, ``seed``, ...).
    """

    def __init__(
        self,
        tuner: str = "auto",
        config: dict | None = None,
        *,
        server: str = AUTO,
        job: str | None = None,
        max_steps: int | None = None,
        **autolrs_options: Any,
    ):
        self.tuner, self.config, self.server, self.job, self.max_steps = tuner, config, server, job, max_steps
        self.options = autolrs_options
        #: The :class:`AutoLRS` of the current ``train`` (None before it begins).
        self.autolrs: AutoLRS | None = None
        self._scheduler: Any = None
        self._hook: Any = None
        self._losses: list[torch.Tensor] = []
        self._shares = False  # the micro-batch losses are shares of the step's mean (num_items_in_batch)
        self._scale = 1
        self._warn = WarnOnce()

    def record_loss(self, loss: torch.Tensor) -> None:
        """Hand over a micro-batch's loss from a ``compute_loss`` of your own (the model's
        outputs then need not carry it)."""
        self._losses.append(loss.detach())

    # --- training -------------------------------------------------------------------------

    def on_train_begin(
        self,
        args: Any,
        state: Any,
        control: Any,
        model: Any = None,
        optimizer: Any = None,
        lr_scheduler: Any = None,
        **kwargs: Any,
    ) -> None:
        _check_scheduler(args, lr_scheduler)
        self._scheduler = lr_scheduler
        optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper holds the torch one
        budget = self.max_steps or (state.max_steps if state.max_steps and state.max_steps > 0 else None)
        # The Trainer's constant scheduler is checked above and kept at the tuner's LRs below.
        options = {"allow_scheduler": True, **self.options}
        self.autolrs = AutoLRS(
            model,
            optimizer,
            tuner=self.tuner,
            config=self.config,
            server=self.server,
            job=self.job,
            max_steps=budget,
            **options,
        )
        self._scale = args.world_size if getattr(args, "average_tokens_across_devices", False) else 1
        self._hook = model.register_forward_hook(self._keep_loss, with_kwargs=True)
        self._losses = []
        self._sync_scheduler()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self.autolrs is None:
            return control
        self.autolrs.step(self._step_loss())
        self._sync_scheduler()
        if self.autolrs.should_stop:
            control.should_training_stop = True
        return control

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self.autolrs is not None:
            self.autolrs.close("done")

    # --- the loss -------------------------------------------------------------------------

    def _keep_loss(self, module: torch.nn.Module, args: Any, kwargs: Mapping[str, Any], output: Any) -> None:
        if not module.training or not torch.is_grad_enabled():
            return  # evaluation, or a forward without backward
        loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
        if isinstance(loss, torch.Tensor):
            self._losses.append(loss.detach())
            self._shares = kwargs.get("num_items_in_batch") is not None

    def _step_loss(self) -> torch.Tensor | None:
        losses, self._losses = self._losses, []
        if not losses:
            self._warn(
                "no_loss",
                (
                    "autolrs: no loss reached AutoLRSCallback in this step: the model's outputs carry "
                    "none (no labels in the batch?) and compute_loss did not call "
                    "callback.record_loss(loss); the tuner gets no loss for such steps"
                ),
            )
            return None
        total = torch.stack([loss.float().reshape(()) for loss in losses]).sum()
        return total * self._scale if self._shares else total / len(losses)

    # --- the Trainer's scheduler ----------------------------------------------------------

    def _sync_scheduler(self) -> None:
        """The constant scheduler writes ``base_lrs`` back at its next step, and the Trainer logs
        its ``get_last_lr()``: make both the LRs the tuner set for the next step."""
        if self._scheduler is not None and self.autolrs is not None:
            lrs = self.autolrs.get_last_lr()
            self._scheduler.base_lrs = list(lrs)
            self._scheduler._last_lr = list(lrs)


def _check_scheduler(args: Any, scheduler: Any) -> None:
    kind = str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type))
    lambdas = getattr(scheduler, "lr_lambdas", None)
    constant = kind == "constant" and lambdas is not None and all(f(0) == 1 and f(10**6) == 1 for f in lambdas)
    if scheduler is not None and not constant:
        raise ValueError(
            f"AutoLRSCallback sets the learning rate itself, and the Trainer's LR scheduler "
            f"(lr_scheduler_type={kind!r}, {type(scheduler).__name__}) would fight it: set "
            "TrainingArguments(lr_scheduler_type='constant') and do not pass a scheduler of your own"
        )
