"""Statistics of one-step loss changes (autolrtuner's method): the LR grid, per-LR summaries of
the loss differentials ``delta = loss_after - loss_before`` and the best-LR rules.

``deltas`` is a matrix with one row per subsample and one column per LR of the grid (the
layout of autolrtuner's ``GetResults()``). numpy and scipy only, so the server (which plans
and summarises) and the client (which plots) share it.

Non-finite values: a step that made the loss NaN or infinite from a finite start diverged, so
its delta is ``+inf`` (the worst change there is); a delta whose starting loss is not finite is
undefined (NaN). A statistic that is not finite never wins a rule.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import numpy as np

SPACINGS = ("log", "linear")
#: The best-LR rules of autolrtuner's ``GetBestLR``.
METHODS = ("mean", "median", "variance", "max")


def lr_grid(lr_min: float, lr_max: float, num: int, spacing: str = "log") -> list[float]:
    """``num`` LRs from ``lr_min`` to ``lr_max`` (both included), log-spaced (``np.geomspace``)
    or evenly spaced (``np.linspace``, autolrtuner's grid), ascending."""
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    if num < 1:
        raise ValueError(f"the grid needs at least 1 LR, got {num}")
    if not 0 < lr_min <= lr_max or (num > 1 and lr_min == lr_max):
        raise ValueError(f"need 0 < lr_min < lr_max, got lr_min={lr_min!r}, lr_max={lr_max!r}")
    space = np.geomspace if spacing == "log" else np.linspace
    grid = space(lr_min, lr_max, num)
    grid[0], grid[-1] = lr_min, lr_max  # exactly the ends asked for (geomspace can be off by an ulp)
    return [float(x) for x in grid]


def delta(before: float, after: float) -> float:
    """``after - before``; ``+inf`` when a finite loss became NaN/inf, NaN when ``before`` is not finite."""
    if not math.isfinite(before):
        return math.nan
    if not math.isfinite(after):
        return math.inf
    return after - before


def as_matrix(deltas: Any, num_lrs: int | None = None) -> np.ndarray:
    """``deltas`` as a float64 (subsamples, LRs) array; checks the width when ``num_lrs`` is given."""
    d = np.asarray(deltas, dtype=np.float64)
    if d.size == 0:
        d = d.reshape(0, num_lrs or 0)
    if d.ndim != 2:
        raise ValueError(f"deltas must be a (subsamples, LRs) matrix, got shape {d.shape}")
    if num_lrs is not None and d.shape[1] != num_lrs:
        raise ValueError(f"deltas have {d.shape[1]} columns for {num_lrs} LRs")
    return d


def statistics(deltas: Any, alpha: float = 0.05) -> dict[str, list[float]]:
    """Per LR (column): ``mean``, ``median``, ``std`` (sample, ddof=1), the two-sided Student-t
    confidence interval of the mean at level ``1 - alpha`` (``ci_low``, ``ci_high``:
    ``mean -+ t_{1-alpha/2, n-1} * std / sqrt(n)``) and ``n``, the number of subsamples.
    With fewer than 2 subsamples ``std`` and the interval are NaN."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    d = as_matrix(deltas)
    n, k = d.shape
    nan = np.full(k, np.nan)
    with np.errstate(invalid="ignore"):  # inf - inf in a column that diverged: NaN, as it should be
        mean = d.mean(axis=0) if n else nan
        median = np.median(d, axis=0) if n else nan
        std = d.std(axis=0, ddof=1) if n > 1 else nan
        if n > 1:
            from scipy import stats

            half = stats.t.ppf(1 - alpha / 2, n - 1) * std / math.sqrt(n)
            low, high = mean - half, mean + half
        else:
            low = high = nan
    return {
        "mean": _floats(mean),
        "median": _floats(median),
        "std": _floats(std),
        "ci_low": _floats(low),
        "ci_high": _floats(high),
        "n": [int(n)] * k,
    }


def best_lr(lrs: Sequence[float], deltas: Any, method: str = "mean") -> dict:
    """autolrtuner's ``GetBestLR`` on a grid ``lrs`` and its ``deltas``; returns ``{"lr",
    "index", "value", "reason"}`` (``lr`` None with the reason when no LR qualifies).

    * ``mean``: the LR whose mean delta is lowest (the most negative: the largest average fall);
    * ``median``: the same with the median;
    * ``variance``: the LR whose deltas have the smallest standard deviation ("most stable");
    * ``max``: the largest LR at which every subsample's delta is <= 0 (an upper bound). The
      original returns 0.0 when none is; here ``lr`` is None, so it is never applied as an LR.

    Ties go to the smallest LR (the first in the grid order), as ``argmin`` in the original.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    lrs = [float(x) for x in lrs]
    d = as_matrix(deltas, len(lrs))
    if d.shape[0] == 0:
        return {"lr": None, "index": None, "value": None, "reason": "no subsample was measured"}
    if method == "max":
        ok = np.all(d <= 0, axis=0)  # NaN compares False: an undefined delta disqualifies
        if not ok.any():
            return {
                "lr": None,
                "index": None,
                "value": None,
                "reason": "every LR had some positive (or non-finite) loss differential",
            }
        i = int(max(np.flatnonzero(ok), key=lambda j: lrs[j]))
        return {"lr": lrs[i], "index": int(i), "value": float(d[:, i].max()), "reason": None}
    key = {"mean": "mean", "median": "median", "variance": "std"}[method]
    if method == "variance" and d.shape[0] < 2:
        return {"lr": None, "index": None, "value": None, "reason": "variance needs 2 or more subsamples"}
    values = np.asarray(statistics(d)[key])
    finite = np.isfinite(values)
    if not finite.any():
        return {"lr": None, "index": None, "value": None, "reason": f"no LR has a finite {key}"}
    i = int(np.argmin(np.where(finite, values, np.inf)))
    return {"lr": lrs[i], "index": i, "value": float(values[i]), "reason": None}


def best_lrs(lrs: Sequence[float], deltas: Any) -> dict[str, dict]:
    """Every rule's answer (see :func:`best_lr`)."""
    return {m: best_lr(lrs, deltas, m) for m in METHODS}


def warn_if_none(result: dict, method: str) -> float | None:
    """The LR of a :func:`best_lr` result; a warning with the reason when there is none."""
    if result["lr"] is None:
        warnings.warn(f"loss_diff: no LR for method {method!r}: {result['reason']}", stacklevel=3)
    return result["lr"]


def _floats(values: np.ndarray) -> list[float]:
    return [float(x) for x in values]
