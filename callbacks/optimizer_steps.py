"""Which ``cb.step()`` calls follow a real ``optimizer.step()``.

An optimizer step post-hook counts the optimizer's steps (no device sync). A GradScaler that
finds inf/NaN gradients skips ``optimizer.step()``, so a ``cb.step()`` with no optimizer step
since the last one is a skipped step; without a GradScaler it is a loop that calls ``cb.step()``
in the wrong place.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["OptimizerSteps"]


class OptimizerSteps:
    """Counts ``optimizer``'s steps from now until :meth:`close`."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.count = 0
        self._seen = 0
        self._hook = None
        if hasattr(optimizer, "register_step_post_hook"):
            self._hook = optimizer.register_step_post_hook(self._counted)

    def _counted(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.count += 1

    def stepped(self) -> bool | None:
        """Whether the optimizer stepped since the last call (None: it cannot be told)."""
        if self._hook is None:
            return None
        stepped, self._seen = self.count != self._seen, self.count
        return stepped

    def close(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
