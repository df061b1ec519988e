"""When has a training run gone wrong? The rules a tuner uses to decide on a rollback.

A *segment* is the training losses of one report. Its *level* is their median (robust to the
odd bad batch). Against the levels of the run's earlier healthy segments:

* a non-finite loss anywhere in the segment is divergence;
* a **sustained rise**: the segment's level is above the lowest earlier level by more than
  ``RISE - 1`` (50 %) of that level's magnitude *and* by more than 3 standard errors of a
  median (``3 * 1.2533 * sigma / sqrt(n)``, ``sigma`` the segment's robust spread: 1.4826 MAD),
  so neither noise nor a loss that is already tiny triggers it. One bad batch that the run
  recovers from is not a rise; a loss that climbs and stays up is.

Validation losses: a value more than ``VAL_TOLERANCE`` (5 %) above the best so far, twice in a
row, means the run is overfitting (the caller counts).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["RISE", "VAL_TOLERANCE", "segment_level", "check_segment"]

RISE = 1.5
VAL_TOLERANCE = 0.05


def segment_level(losses: Sequence[float]) -> float:
    """The segment's median loss (NaN for an empty one)."""
    return float(np.median(np.asarray(losses, dtype=float))) if len(losses) else math.nan


def check_segment(losses: Sequence[float], earlier_levels: Sequence[float]) -> str | None:
    """Why the segment shows divergence, or None when it does not."""
    y = np.asarray(list(losses), dtype=float)
    if y.size == 0:
        return None
    bad = int(np.sum(~np.isfinite(y)))
    if bad:
        return f"{bad} non-finite loss(es)"
    levels = [x for x in earlier_levels if math.isfinite(x)]
    if not levels:
        return None
    ref = min(levels)
    level = float(np.median(y))
    sigma = 1.4826 * float(np.median(np.abs(y - level)))
    margin = 3 * 1.2533 * sigma / math.sqrt(y.size)
    if level - ref > max((RISE - 1) * abs(ref), margin):
        return f"loss rose to {level:.4g} (median of {y.size} steps) from {ref:.4g}"
    return None
