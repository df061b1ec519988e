"""The one place that writes ``"lr"`` into an optimizer's param groups.

:func:`write_lrs` writes one value per group: into a tensor LR in place (capturable and
compiled optimizers hold a 0-d tensor and keep using that object), over a float LR otherwise.
:class:`GroupLRs` turns a base LR into those values, keeping each group's ratio to group 0 as
it was at the start. The callback, its probes, ``LRFinder`` and the hypergradient engine all go
through these two; nothing else in ``autolrs.callbacks`` assigns ``group["lr"]``.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

__all__ = ["GroupLRs", "lr_value", "scheduler_attached", "write_lrs"]


def scheduler_attached(optimizer: torch.optim.Optimizer) -> bool:
    """Whether a ``torch.optim.lr_scheduler`` scheduler was built on ``optimizer``: it wraps
    ``optimizer.step`` and leaves ``initial_lr`` in the param groups. (ReduceLROnPlateau does
    neither and is not seen.)"""
    return bool(getattr(optimizer.step, "_wrapped_by_lr_sched", False)) or any(
        "initial_lr" in group for group in optimizer.param_groups
    )


def lr_value(lr: Any) -> float:
    """A param group's LR as a float (it may be a 0-d tensor)."""
    return float(lr.item()) if isinstance(lr, torch.Tensor) else float(lr)


def write_lrs(optimizer: torch.optim.Optimizer, values: Sequence[Any]) -> None:
    """Set param group ``i``'s LR to ``values[i]`` (floats or tensors; extra groups untouched)."""
    for group, value in zip(optimizer.param_groups, values):
        current = group["lr"]
        if isinstance(current, torch.Tensor):
            if isinstance(value, torch.Tensor):
                current.copy_(value)
            else:
                current.fill_(value)
        else:
            group["lr"] = value


class GroupLRs:
    """The base LR (param group 0's) of an optimizer and each group's ratio to it.

    The ratios are those of construction; a group added later keeps the LR it has when a base
    LR is first set after it appeared, and from then on its ratio to the base LR. Setting the initial base LR gives every group its initial LR
    exactly (``lr0 * (g / lr0)`` can be off by an ulp), so a restore followed by the initial LR
    is bitwise.
    """

    def __init__(self, optimizer: torch.optim.Optimizer):
        if not optimizer.param_groups:
            raise ValueError("the optimizer has no param groups")
        self.optimizer = optimizer
        initial = [lr_value(g["lr"]) for g in optimizer.param_groups]
        self.initial = initial[0]
        self._initial_lrs = initial
        self._ratios = [1.0 if self.initial == 0 else lr / self.initial for lr in initial]
        #: The base LR last set (or found at construction).
        self.base = self.initial

    @property
    def ratios(self) -> tuple[float, ...]:
        """Each param group's LR divided by the base LR."""
        return tuple(self._ratios)

    def set(self, lr: float) -> None:
        """Set the base LR: every param group gets ``lr`` times its ratio."""
        lr = float(lr)
        self.base = lr
        groups, ratios = self.optimizer.param_groups, self._ratios
        for g in groups[len(ratios) :]:
            ratios.append(1.0 if lr == 0 else lr_value(g["lr"]) / lr)
        if lr == self.initial:
            values = self._initial_lrs + [lr * r for r in ratios[len(self._initial_lrs) :]]
        else:
            values = [lr * r for r in ratios]
        write_lrs(self.optimizer, values)

    def current(self) -> list[float]:
        """Every param group's LR now, as floats."""
        return [lr_value(g["lr"]) for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {
            "base": self.base,
            "initial": self.initial,
            "initial_lrs": list(self._initial_lrs),
            "ratios": list(self._ratios),
        }

    def load_state_dict(self, state: dict) -> None:
        """Take the base, initial and ratios of :meth:`state_dict` (the param groups' LRs are
        the optimizer's own state, restored with it; nothing is written here)."""
        ratios, initial_lrs = [float(r) for r in state["ratios"]], [float(x) for x in state["initial_lrs"]]
        if not ratios or len(initial_lrs) > len(ratios):
            raise ValueError("LR state: 'ratios' must list at least the groups of 'initial_lrs'")
        self.base, self.initial = float(state["base"]), float(state["initial"])
        self._initial_lrs, self._ratios = initial_lrs, ratios
