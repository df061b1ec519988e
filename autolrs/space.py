"""The LR search interval on a log scale, mapped to the unit interval.

Bayesian optimisation works on ``u = (log10(lr) - log10(min_lr)) / (log10(max_lr) - log10(min_lr))``
in ``[0, 1]``, the same normalisation scikit-optimize applies to a ``Real(..., "log-uniform")``
dimension. Only the standard library and numpy are used.
"""

from __future__ import annotations

import math

import numpy as np


class LogSpace:
    """``[min_lr, max_lr]`` (0 < min_lr < max_lr) in log10, scaled to ``[0, 1]``."""

    def __init__(self, min_lr: float, max_lr: float):
        min_lr, max_lr = float(min_lr), float(max_lr)
        if not (math.isfinite(min_lr) and math.isfinite(max_lr) and 0 < min_lr < max_lr):
            raise ValueError(f"need 0 < min_lr < max_lr (finite), got {min_lr!r}, {max_lr!r}")
        self.min_lr, self.max_lr = min_lr, max_lr
        self._lo = math.log10(min_lr)
        self._span = math.log10(max_lr) - self._lo

    def to_unit(self, lr: float) -> float:
        """``lr`` -> ``u`` in [0, 1] (clamped)."""
        u = (math.log10(lr) - self._lo) / self._span
        return min(1.0, max(0.0, u))

    def from_unit(self, u: float) -> float:
        """``u`` -> LR, clamped to ``[min_lr, max_lr]`` so rounding never leaves the interval."""
        u = min(1.0, max(0.0, float(u)))
        if u == 0.0:
            return self.min_lr
        if u == 1.0:
            return self.max_lr
        return min(self.max_lr, max(self.min_lr, 10.0 ** (self._lo + u * self._span)))

    def sample(self, rng: np.random.Generator) -> float:
        """One log-uniform draw from the interval."""
        return self.from_unit(float(rng.random()))

    def clamp(self, lr: float) -> float:
        return min(self.max_lr, max(self.min_lr, float(lr)))
