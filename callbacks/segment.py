"""The ``run`` segment being trained: counting its steps, setting the LR of each, calling for the
evaluations it asks for, collecting its losses, and handing them over for the report.

Between two events a step only counts: :meth:`Segment.advance` keeps ``loss.detach()`` and
compares two integers. An event is the segment's end, an evaluation (``eval_every``) or a step
whose LR differs from the previous step's; :meth:`Segment.event` handles it and says when the
segment is over. Losses stay tensors until :meth:`Segment.take_losses` turns them into floats
in one device-to-host copy, so there is no device sync per step.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any, Callable

import torch

log = logging.getLogger(__name__)

__all__ = ["Segment"]


class Segment:
    """One plan's ``run`` at a time. ``set_lr(lr)`` sets the base LR; ``evaluate()`` returns a
    validation value (a float, NaN when there is no ``val_fn``); ``job`` names it in the log."""

    #: The most losses one report carries (the last ones of a segment): bounds memory and the
    #: size of a report (10,000 floats are ~200 kB of JSON).
    MAX_LOSSES = 10_000

    def __init__(self, set_lr: Callable[[float], None], evaluate: Callable[[], float], job: str = ""):
        self.job = job
        self._set_lr = set_lr
        self._evaluate = evaluate
        #: Whether a segment is being trained.
        self.active = False
        #: Steps done in it, and how many it has.
        self.done = 0
        self.length = 0
        self._next_event = 0
        self._lrs: list[float] | None = None
        self._lr_next = 0
        self._eval_every = 0
        self._losses: deque = deque(maxlen=self.MAX_LOSSES)
        self._sink: Callable[[Any], None] | None = self._losses.append
        #: ``[position, value]`` of the evaluations so far (position 0: the plan's ``evaluate``).
        self.evals: list[list] = []

    def clear(self) -> None:
        """Forget the segment (a new plan begins, or the callback closes)."""
        self.active = False
        self._losses.clear()
        self.evals = []

    def start(self, action: dict, global_step: int, on_time: bool = False, ahead: bool = False) -> None:
        """Begin the plan's ``run``. A client that fell behind (the reply came late) skips the
        steps it already trained: ``start_step`` says where the server expected it to be.
        ``on_time``: the client went back to the state the plan was made for (the steps in
        between were undone), so nothing is skipped. ``ahead``: the client trains on a plan the
        server sent ahead, so its LR is the schedule's for this step."""
        steps, lrs = action["steps"], action.get("lrs")
        skip = 0 if on_time else max(0, global_step - action["start_step"])
        remaining = steps - skip
        if remaining <= 0:
            # Nothing of the segment is left: report after the next step, at the schedule's LR for
            # it (the plan sent ahead's when the client is on one, else the segment's last).
            remaining = 1
            lrs = None if lrs is None or ahead else lrs[-1:]
        elif lrs is not None and skip:
            lrs = lrs[skip:]
        if skip:
            log.info(
                "autolrs job %s: %d step(s) late for a segment starting at step %d; running %d",
                self.job,
                skip,
                action["start_step"],
                remaining,
            )
        self.length, self.done = remaining, 0
        self._lrs, self._lr_next = lrs, 0
        self._eval_every = action.get("eval_every", 0)
        self._sink = self._losses.append if "loss" in action.get("collect", ("loss",)) else None
        if lrs is not None:
            self._set_lr(lrs[0])
        self._schedule()
        self.active = True

    def advance(self, loss: Any) -> bool:
        """Count one step with its ``loss`` (tensor, float or None); True when an event is due."""
        sink = self._sink
        if sink is not None and loss is not None:
            sink(loss.detach() if isinstance(loss, torch.Tensor) else loss)
        self.done += 1
        return self.done >= self._next_event

    def event(self) -> bool:
        """Handle the due event (evaluate, set the step's LR); True when the segment is over."""
        done, every = self.done, self._eval_every
        if every and done % every == 0:
            self.evals.append([done, self._evaluate()])
        if done >= self.length:
            self.active = False
            return True
        if self._lrs is not None and done == self._lr_next:
            self._set_lr(self._lrs[done])
        self._schedule()
        return False

    def _schedule(self) -> None:
        """The next count of steps done at which there is work: the end, an evaluation, or an
        LR different from the previous step's."""
        done, nxt, every = self.done, self.length, self._eval_every
        if every:
            nxt = min(nxt, (done // every + 1) * every)
        lrs = self._lrs
        if lrs is not None:
            j = self._lr_next
            if j <= done:
                # Scan forward once per segment in total: the first step whose LR changes.
                j, n = done + 1, self.length
                while j < n and lrs[j] == lrs[j - 1]:
                    j += 1
                self._lr_next = j
            nxt = min(nxt, j)
        self._next_event = nxt

    def take_losses(self) -> list[float]:
        """The collected losses as floats (one device-to-host copy), and forget them."""
        buf = list(self._losses)
        self._losses.clear()
        if not buf:
            return []
        if all(isinstance(x, torch.Tensor) for x in buf):
            try:
                # Through float64 so every value, whatever its float dtype, becomes exactly the
                # same Python float.
                values = torch.stack(buf).detach().cpu().double()
            except RuntimeError:  # mixed shapes or devices
                return [float(x.float().mean()) for x in buf]
            if values.dim() > 1:
                values = values.reshape(len(buf), -1).mean(1)
            return values.tolist()
        return [float(x.float().mean()) if isinstance(x, torch.Tensor) else float(x) for x in buf]
