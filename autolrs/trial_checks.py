"""Is a trial's loss window healthy enough to win a stage? (AutoLRS's stage decision)

A short trial at an LR near divergence often shows a fast early fall that forecasts well, then
turns: the loss starts rising, spikes, or jitters far more than at the other LRs. Such a trial
must not win, however good its forecast. Three checks on the raw window (numpy only):

* **rising tail**: the window is cut into 5 blocks; the last block's median lies above the
  lowest earlier block median by more than 3 standard errors of a difference of block medians
  (``3 * 1.2533 * sigma * sqrt(2 / L)`` for blocks of ``L`` points, ``sigma`` the window's
  noise). A plateau does not trigger it; a loss that fell and climbs back does. Windows under
  10 points are not checked.
* **spikes**: two or more points of the window's second half more than ``8 sigma`` above the
  5-point running median (one outlier batch is not instability; the forecaster filters those
  in the first half).
* **noisy**: a noise level more than 10 times the median of the stage's other finite trials
  (larger LRs are noisier by nature, so only gross excess counts). Needs 3 or more peers.

``sigma`` is :func:`autolrs.forecast.noise_sigma`, a robust noise estimate from second
differences (a local trend cancels).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from autolrs.forecast import noise_sigma

__all__ = ["WindowHealth", "window_health", "unstable_reasons"]

BLOCKS = 5
MIN_POINTS = 2 * BLOCKS
SPIKE_SIGMAS = 8.0
MIN_SPIKES = 2
NOISE_RATIO = 10.0
MIN_PEERS = 3


@dataclass(frozen=True)
class WindowHealth:
    rising_tail: bool
    spikes: int
    sigma: float  # the window's noise level (NaN when it cannot be estimated)

    def reasons(self) -> list[str]:
        out = []
        if self.rising_tail:
            out.append("rising tail")
        if self.spikes >= MIN_SPIKES:
            out.append(f"{self.spikes} spikes")
        return out


def window_health(values: Sequence[float]) -> WindowHealth:
    """The self-contained checks of one window (finite values; the caller handles NaN/inf)."""
    y = np.asarray(values, dtype=float).ravel()
    if y.size < 4 or not np.all(np.isfinite(y)):
        return WindowHealth(False, 0, math.nan)
    sigma = noise_sigma(y)
    rising = False
    if y.size >= MIN_POINTS:
        blocks = np.array_split(y, BLOCKS)
        medians = [float(np.median(b)) for b in blocks]
        length = min(b.size for b in blocks)
        margin = 3.0 * 1.2533 * sigma * math.sqrt(2.0 / length)
        rising = medians[-1] > min(medians[:-1]) + margin
    spikes = 0
    if y.size >= 5 and sigma > 0:
        from_median = y - _running_median(y, 5)
        half = y.size // 2
        spikes = int(np.sum(from_median[half:] > SPIKE_SIGMAS * sigma))
    return WindowHealth(bool(rising), spikes, sigma)


def unstable_reasons(healths: Sequence[WindowHealth | None]) -> list[list[str]]:
    """For each trial (None: failed, no window), why it may not win; adds the peer noise check."""
    sigmas = [h.sigma for h in healths if h is not None and math.isfinite(h.sigma)]
    out = []
    for h in healths:
        if h is None:
            out.append(["failed"])
            continue
        reasons = h.reasons()
        peers = list(sigmas)
        if math.isfinite(h.sigma) and h.sigma in peers:
            peers.remove(h.sigma)
        if len(peers) >= MIN_PEERS and math.isfinite(h.sigma):
            typical = float(np.median(peers))
            if typical > 0 and h.sigma > NOISE_RATIO * typical:
                reasons.append(f"noise {h.sigma / typical:.0f}x its peers'")
        out.append(reasons)
    return out


def _running_median(y: np.ndarray, size: int) -> np.ndarray:
    """Centred running median, the ends padded with the edge values."""
    pad = size // 2
    padded = np.concatenate([np.full(pad, y[0]), y, np.full(pad, y[-1])])
    windows = np.lib.stride_tricks.sliding_window_view(padded, size)
    return np.median(windows, axis=1)
