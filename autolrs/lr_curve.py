"""Analysis of an LR range-test curve: the sweep's LRs, smoothing, suggestions, AutoLRS bounds.

numpy (scipy lazily, for :func:`centred`), no torch: the server's ``range_test`` tuner and the client's ``LRFinder`` share
this one copy.

* :func:`sweep_lrs` / :func:`sweep_lr`: torch-lr-finder's ``ExponentialLR`` / ``LinearLR``
  schedules, ``r = i / (num_iter - 1)``; exp ``start * (end / start) ** r``, linear
  ``start + r * (end - start)``. ``lrs[0] == start``, ``lrs[-1] == end``.
* :class:`Smoother`: torch-lr-finder's smoothing and divergence test. The first loss is kept
  raw and is the first ``best``; after it ``s = smooth_f * loss + (1 - smooth_f) * s_prev``
  (an EMA of the previous *smoothed* value, no bias correction), ``best = min(best, s)``, and
  the sweep has diverged once ``s > diverge_th * best``. A non-finite smoothed loss also counts
  as divergence (torch-lr-finder never stops on NaN because ``nan > x`` is false).
* Suggestions, each on the smoothed curve after dropping non-finite points (NaN, inf) and then
  ``skip_start`` points at the low-LR end and ``skip_end`` at the high-LR end:

  - ``steepest``: the LR where the loss falls fastest, ``argmin(np.gradient(loss, x))``. The
    gradient is taken w.r.t. ``log10(lr)`` by default (``wrt="log_lr"``; the points of a
    linear sweep are not evenly spaced on the plot's log axis); ``wrt="index"`` gives
    torch-lr-finder's exact choice (w.r.t. the sample index; identical to log-LR for an
    unbroken exp sweep). Skips default to 10 and 5 (torch-lr-finder's plot) and at least
    ``skip_start + skip_end + 2`` finite points are needed.
  - ``valley``: fastai's default ``valley`` (longest strictly decreasing run, via a
    longest-decreasing-subsequence table; the LR two thirds down it - more exactly at
    ``start + int(len/3) + int(len/6)``), bug-compatible with fastai including its update of
    the run's start. Skips default to fastai's ``n // 10`` and 5.
  - ``minimum``: fastai's ``minimum``: the LR at the lowest loss, divided by 10. Same skips as
    ``valley``.

  Every suggestion is a dict ``{"method", "lr", "index", "loss", "reason"}``: ``lr`` is None and
  ``reason`` says why when the curve is too short; ``index`` is the point's position in the
  lists given.
* :func:`bounds_from_curve`: a search interval for the ``autolrs`` tuner (rule in its doc).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "METHODS",
    "DEFAULT_METHOD",
    "sweep_lr",
    "sweep_lrs",
    "smooth",
    "Smoother",
    "steepest",
    "valley",
    "minimum",
    "suggest",
    "suggest_all",
    "debiased",
    "centred",
    "fell",
    "bounds_from_curve",
]

METHODS = ("steepest", "valley", "minimum")
#: The rule the range test applies by default (measured on bench/quality.py: see the README).
DEFAULT_METHOD = "minimum"
STEP_MODES = ("exp", "linear")


# --- the sweep ------------------------------------------------------------------------------


def sweep_lr(i: int, start_lr: float, end_lr: float, num_iter: int, step_mode: str = "exp") -> float:
    """The LR of iteration ``i`` (0-based) of a sweep, as torch-lr-finder computes it."""
    if num_iter <= 1:
        raise ValueError("`num_iter` must be larger than 1")
    r = i / (num_iter - 1)
    mode = step_mode.lower()
    if mode == "exp":
        return start_lr * (end_lr / start_lr) ** r
    if mode == "linear":
        return start_lr + r * (end_lr - start_lr)
    raise ValueError(f"expected one of (exp, linear), got {step_mode}")


def sweep_lrs(start_lr: float, end_lr: float, num_iter: int, step_mode: str = "exp") -> list[float]:
    """Every LR of a sweep (``num_iter`` of them)."""
    if num_iter <= 1:
        raise ValueError("`num_iter` must be larger than 1")
    return [sweep_lr(i, start_lr, end_lr, num_iter, step_mode) for i in range(num_iter)]


# --- smoothing and divergence ---------------------------------------------------------------


class Smoother:
    """torch-lr-finder's running smoothing, best loss and divergence test, one loss at a time.

    ``diverge_th=None`` disables the ratio test (useful when losses can be negative, where
    ``diverge_th * best`` means nothing); a non-finite smoothed loss still ends the sweep.
    """

    def __init__(self, smooth_f: float = 0.05, diverge_th: float | None = 5.0):
        if not 0 <= smooth_f < 1:
            raise ValueError(f"smooth_f is outside the range [0, 1), got {smooth_f!r}")
        self.smooth_f = float(smooth_f)
        self.diverge_th = None if diverge_th is None else float(diverge_th)
        self.last: float | None = None
        self.best: float | None = None

    def add(self, loss: float) -> tuple[float, bool]:
        """Take one raw loss; return its smoothed value and whether the sweep has diverged."""
        loss = float(loss)
        if self.last is None:
            smoothed = loss
            self.best = loss
        else:
            if self.smooth_f > 0:
                smoothed = self.smooth_f * loss + (1 - self.smooth_f) * self.last
            else:
                smoothed = loss
            if smoothed < self.best:  # as min(best, s); a NaN never becomes the best
                self.best = smoothed
        self.last = smoothed
        if not math.isfinite(smoothed):
            return smoothed, True
        diverged = self.diverge_th is not None and smoothed > self.diverge_th * self.best
        return smoothed, diverged

    def state_dict(self) -> dict:
        return {"last": self.last, "best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.last = None if state["last"] is None else float(state["last"])
        self.best = None if state["best"] is None else float(state["best"])


def smooth(losses: Sequence[float], smooth_f: float = 0.05) -> list[float]:
    """The smoothed curve of a whole list of raw losses (no divergence stop)."""
    s = Smoother(smooth_f, None)
    return [s.add(x)[0] for x in losses]


def centred(losses: ArrayLike) -> list[float]:
    """A lag-free smoothing of raw losses: the centred running median over ``max(3, n // 10)``
    points (made odd), ends padded with the edge values; non-finite points dropped first and
    returned as NaN. Unlike an exponential average it neither starts at one batch's loss nor
    trails the LR, which matters on short sweeps (a 30-point sweep is all lag at ``smooth_f =
    0.05``)."""
    from scipy.ndimage import median_filter

    values = np.asarray(losses, dtype=np.float64)
    keep = np.isfinite(values)
    out = np.full(values.shape, np.nan)
    if keep.any():
        head = max(1, int(keep.sum()) // 10)
        out[keep] = median_filter(values[keep], size=max(3, head | 1), mode="nearest")
    return out.tolist()


def fell(curve: Sequence[float], fraction: float) -> bool:
    """Whether a smoothed curve's lowest point is below its start (the median of its first
    tenth) by more than ``fraction`` of the start's magnitude: did the sweep see learning?"""
    finite = [float(x) for x in curve if math.isfinite(x)]
    if len(finite) < 3:
        return False
    start = float(np.median(finite[: max(1, len(finite) // 10)]))
    return start - min(finite) > fraction * abs(start)


def debiased(losses: Sequence[float], smooth_f: float = 0.05) -> list[float]:
    """fastai's bias-corrected smoothing of raw losses: ``avg = beta * avg + (1 - beta) * loss``
    from ``avg = 0``, divided by ``1 - beta ** i`` (``beta = 1 - smooth_f``). Early points are
    averages of the points so far (torch-lr-finder's curve is the first batch's loss for dozens
    of points). Non-finite losses are carried through as NaN and do not enter the average."""
    beta = 1.0 - float(smooth_f)
    avg, weight, out = 0.0, 0.0, []
    for x in losses:
        x = float(x)
        if not math.isfinite(x):
            out.append(math.nan)
            continue
        avg = beta * avg + (1 - beta) * x
        weight = beta * weight + (1 - beta)
        out.append(avg / weight if weight > 0 else x)
    return out


# --- suggestions ----------------------------------------------------------------------------


def _finite(lrs: Sequence[float], losses: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lr = np.asarray(lrs, dtype=np.float64)
    loss = np.asarray(losses, dtype=np.float64)
    if lr.shape != loss.shape or lr.ndim != 1:
        raise ValueError(f"lrs and losses must be 1-d and of the same length, got {lr.shape} and {loss.shape}")
    keep = np.isfinite(lr) & np.isfinite(loss)
    return lr[keep], loss[keep], np.flatnonzero(keep)


def _trim(n: int, skip_start: int, skip_end: int) -> slice:
    if skip_start < 0 or skip_end < 0:
        raise ValueError("skip_start and skip_end must be >= 0")
    return slice(skip_start, n - skip_end)


def _result(
    method: str, lr: float | None, index: int | None = None, loss: float | None = None, reason: str | None = None
) -> dict:
    return {
        "method": method,
        "lr": None if lr is None else float(lr),
        "index": None if index is None else int(index),
        "loss": None if loss is None else float(loss),
        "reason": reason,
    }


def steepest(
    lrs: Sequence[float], losses: Sequence[float], skip_start: int = 10, skip_end: int = 5, wrt: str = "log_lr"
) -> dict:
    """The LR of the steepest descent of the loss (see the module doc)."""
    lr, loss, where = _finite(lrs, losses)
    n = len(lr)
    need = skip_start + skip_end + 2
    if n < need:
        return _result(
            "steepest",
            None,
            reason=(
                f"need at least {need} finite points (skip_start={skip_start} + skip_end={skip_end} + 2) "
                f"to suggest a learning rate, got {n}"
            ),
        )
    part = _trim(n, skip_start, skip_end)
    lr, loss, where = lr[part], loss[part], where[part]
    if wrt == "index":
        grad = np.gradient(loss)
    elif wrt in ("log_lr", "lr"):
        if wrt == "log_lr" and not np.all(lr > 0):
            return _result("steepest", None, reason="wrt='log_lr' needs positive LRs")
        x = np.log10(lr) if wrt == "log_lr" else lr
        if np.any(np.diff(x) <= 0):
            return _result("steepest", None, reason="the LRs must increase strictly for a gradient w.r.t. the LR")
        grad = np.gradient(loss, x)
    else:
        raise ValueError(f"wrt must be one of (log_lr, lr, index), got {wrt!r}")
    i = int(np.argmin(grad))
    return _result("steepest", lr[i], where[i], loss[i])


def _default_skips(n: int, skip_start: int | None, skip_end: int | None) -> tuple[int, int]:
    return (n // 10 if skip_start is None else skip_start), (5 if skip_end is None else skip_end)


def valley(
    lrs: Sequence[float], losses: Sequence[float], skip_start: int | None = None, skip_end: int | None = None
) -> dict:
    """fastai's ``valley`` suggestion (see the module doc); ``skip_start`` defaults to
    ``len(lrs) // 10`` (fastai's ``num_it // 10``), ``skip_end`` to 5."""
    lr, loss, where = _finite(lrs, losses)
    skip_start, skip_end = _default_skips(len(lrs), skip_start, skip_end)
    n = len(lr) - skip_start - skip_end
    if n < 2:
        return _result(
            "valley",
            None,
            reason=(
                f"need at least {skip_start + skip_end + 2} finite points (skip_start={skip_start} + "
                f"skip_end={skip_end} + 2) for the valley rule, got {len(lr)}"
            ),
        )
    part = _trim(len(lr), skip_start, skip_end)
    lr, loss, where = lr[part], loss[part], where[part]
    # fastai's double loop, vectorised over j; it updates (max_start, max_end) the moment the
    # running lds[i] first exceeds lds[max_end], so max_start uses that first value.
    lds = np.ones(n, dtype=np.int64)
    max_start = max_end = 0
    for i in range(1, n):
        above = loss[:i] > loss[i]
        vals = lds[:i][above] + 1
        if vals.size:
            lds[i] = max(1, int(vals.max()))
        best = lds[max_end]
        if lds[i] > best:
            first = int(vals[np.argmax(vals > best)])
            max_end = i
            max_start = i - first
    sections = (max_end - max_start) / 3
    idx = max_start + int(sections) + int(sections / 2)
    return _result("valley", lr[idx], where[idx], loss[idx])


def minimum(
    lrs: Sequence[float], losses: Sequence[float], skip_start: int | None = None, skip_end: int | None = None
) -> dict:
    """fastai's ``minimum``: the LR at the lowest loss / 10 (``index``/``loss``: that point)."""
    lr, loss, where = _finite(lrs, losses)
    skip_start, skip_end = _default_skips(len(lrs), skip_start, skip_end)
    if len(lr) - skip_start - skip_end < 1:
        return _result(
            "minimum",
            None,
            reason=(
                f"need at least {skip_start + skip_end + 1} finite points (skip_start={skip_start} + "
                f"skip_end={skip_end} + 1), got {len(lr)}"
            ),
        )
    part = _trim(len(lr), skip_start, skip_end)
    lr, loss, where = lr[part], loss[part], where[part]
    i = int(np.argmin(loss))
    return _result("minimum", lr[i] / 10, where[i], loss[i])


_FUNCS = {"steepest": steepest, "valley": valley, "minimum": minimum}


def suggest(lrs: Sequence[float], losses: Sequence[float], method: str = "steepest", **kwargs) -> dict:
    """One suggestion by name (``steepest``, ``valley`` or ``minimum``); kwargs go to it."""
    try:
        func = _FUNCS[method]
    except KeyError:
        raise ValueError(f"unknown suggestion method {method!r}; one of {', '.join(METHODS)}") from None
    return func(lrs, losses, **kwargs)


def suggest_all(lrs: Sequence[float], losses: Sequence[float]) -> dict:
    """Every method with its default skips: ``{method: suggestion}``."""
    return {m: suggest(lrs, losses, m) for m in METHODS}


# --- AutoLRS bounds -------------------------------------------------------------------------


def bounds_from_curve(
    lrs: Sequence[float],
    losses: Sequence[float],
    *,
    drop_fraction: float = 0.1,
    min_decades: float = 1.0,
    below_minimum: float = 1.0,
) -> tuple[float, float]:
    """A search interval ``(min_lr, max_lr)`` for the ``autolrs`` tuner (or, with a wider
    ``min_decades``, an Alrao interval) from a range test.

    ``losses`` is the *raw* curve, one loss per LR (the ``range_test`` tuner's ``history["loss"]``,
    ``LRFinder``'s ``history["raw_loss"]``), ``lrs`` increasing. Non-finite points are dropped,
    then the curve is smoothed by :func:`centred` (a running median over ``max(3, n // 10)``
    points). The rule:

    * ``max_lr`` is the LR at the lowest smoothed loss divided by ``below_minimum``: past that
      LR the loss rises, so a constant LR above it would diverge or train worse (Leslie Smith's
      "where the loss stops descending"); and a constant LR at it is already on the edge
      (the ``autolrs`` tuner's automatic bounds divide by 3, measured in bench/quality.py).
    * ``start`` is the median of the first tenth of the raw points (at least one).
    * ``min_lr`` is the LR from which on the smoothed loss stays at least ``drop_fraction`` (10 %)
      of the total fall ``start - min`` below ``start`` up to the minimum ("where the loss starts
      descending"), lowered when needed so that the interval spans at least ``min_decades`` (1)
      decades: ``min_lr = min(that LR, max_lr / 10 ** min_decades)``, but never below the
      sweep's first LR.

    Raises ValueError when the curve cannot support it: fewer than 3 finite points, LRs not
    positive, or no fall at all (the smoothed loss never drops below ``start`` after it).
    """
    lr, loss, _ = _finite(lrs, losses)
    if len(lr) < 3:
        raise ValueError(f"a range-test curve needs at least 3 finite points to derive bounds, got {len(lr)}")
    if not np.all(lr > 0):
        raise ValueError("bounds_from_curve needs positive LRs")
    head = max(1, len(loss) // 10)
    start = float(np.median(loss[:head]))
    loss = np.asarray(centred(loss))
    i_min = head + int(np.argmin(loss[head:]))
    fall = start - loss[i_min]
    if not fall > 0:
        raise ValueError(
            "the loss never fell below its start during the range test; no LR interval "
            "can be derived (start the sweep lower or check the model)"
        )
    if not below_minimum >= 1:
        raise ValueError(f"below_minimum must be >= 1, got {below_minimum!r}")
    max_lr = float(lr[i_min]) / below_minimum
    threshold = start - drop_fraction * fall
    # The fall starts after the last point above the threshold (before the minimum): a noisy or
    # lucky early point below it does not count as the start.
    above = np.nonzero(loss[: i_min + 1] > threshold)[0]
    first = int(above[-1]) + 1 if above.size else 0
    low = min(float(lr[first]), max_lr / 10.0**min_decades)
    min_lr = max(low, float(lr[0]))
    if min_lr >= max_lr:  # the minimum is the very first point
        min_lr = float(lr[0])
    return min_lr, max_lr
