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

The divergence guard (:mod:`autolrs.tuners.guard`) asks a different question of each segment:
may training go on from the state it ended in, and may that state be saved as the last good
one? :func:`judge_segment` compares the segment with a reference level ``ref`` (the lowest level
of the run's healthy windows; before there is one, the run's start level, :func:`start_level`)
and answers with a :class:`Verdict`:

* ``diverged`` when the segment has

  - a non-finite loss;
  - a **rise**: its end level (the median of its last quarter, at least ``TAIL_MIN`` losses)
    above ``ref`` by more than the largest of ``RISE - 1`` (50 %) of ``|ref|``, ``PROGRESS``
    (25 %) of the run's progress so far (its start level minus ``ref``), and 3 standard errors
    of healthy noise;
  - a **spike**: ``SPIKE_COUNT`` (3) of ``SPIKE_WINDOW`` (5) consecutive losses (a running
    median of 5 above the threshold) above ``ref`` by more than the largest of ``SPIKE_RISE - 1``
    (100 %) of ``|ref|``, ``SPIKE_PROGRESS`` (50 %) of the progress and 3 standard deviations
    of healthy noise. One or two bad batches are not a spike; a blow-up that a too large LR
    causes in a few steps, even one the loss comes back from (often to chance level, with a
    dead network), is. The window reaches back into the previous segment's last losses.

  The progress terms are what tell a loss going back towards where training began from the
  milder rise of a warm restart, or a hard stretch of data once the loss is small.
* ``suspect`` when a loss of the segment is beyond the spike threshold but not enough of them
  for a spike (one may be starting, or the weights may be worse than the losses show yet): go
  on, but do not save this state as good; the next segment decides.
* ``ok`` otherwise.

**Early in a run** (``early=True``: the caller's judgement that the loss has not fallen
``UNDERWAY`` (10 %) below its start level yet) the spike threshold is at most ``EARLY_RISE - 1``
(25 %) of ``|start|`` above the start level (or 3 standard deviations of the noise, if larger;
before a healthy window gives it, the noise of the segment's second half): from initial weights a good LR does not raise the loss above its start for
3 of 5 steps. A too large LR often does, in the first few steps, and then leaves a network
sitting at chance level whose loss is no higher than at the start and shows no more spikes
(dead ReLU units); this is the one moment the damage can be seen.

What no rule can see: the update of a segment's last step shows only in the next segment's
first loss, so a blow-up in exactly that step is saved as good; the next segment then diverges
from its first step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "RISE",
    "VAL_TOLERANCE",
    "PROGRESS",
    "Verdict",
    "segment_level",
    "segment_noise",
    "start_level",
    "under_way",
    "check_segment",
    "judge_segment",
]

RISE = 1.5
VAL_TOLERANCE = 0.05
#: The guard's rise threshold is at least this share of the run's progress (start - reference).
PROGRESS = 0.25
#: The end level of a segment is the median of its last quarter, at least this many losses.
TAIL_MIN = 5
#: A spike: ``SPIKE_COUNT`` of ``SPIKE_WINDOW`` consecutive losses above ``ref`` by
#: ``SPIKE_RISE - 1`` of it, and by ``SPIKE_PROGRESS`` of the run's progress.
SPIKE_COUNT, SPIKE_WINDOW = 3, 5
SPIKE_RISE = 2.0
SPIKE_PROGRESS = 0.5
#: Before the loss is ``UNDERWAY`` below its start level, a spike is ``EARLY_RISE - 1`` above it.
UNDERWAY = 0.1
EARLY_RISE = 1.25
#: A median's standard error in units of sigma / sqrt(n) (normal noise), times 3.
_MEDIAN_SE3 = 3 * 1.2533


def segment_level(losses: Sequence[float]) -> float:
    """The segment's median loss (NaN for an empty one)."""
    return float(np.median(np.asarray(losses, dtype=float))) if len(losses) else math.nan


def segment_noise(losses: ArrayLike) -> float:
    """A robust standard deviation of the losses: 1.4826 times their median absolute deviation."""
    y = np.asarray(losses, dtype=float)
    if y.size == 0:
        return math.nan
    return 1.4826 * float(np.median(np.abs(y - np.median(y))))


def _rise_threshold(
    ref: float, margin: float, start: float | None = None, rise: float = RISE, progress: float = PROGRESS
) -> float:
    """How far above the reference level a level may be before it counts as a rise."""
    threshold = max((rise - 1) * abs(ref), margin)
    if start is not None and math.isfinite(start) and start > ref:
        threshold = max(threshold, progress * (start - ref))
    return threshold


def under_way(level: float, start: float | None) -> bool:
    """Whether a level is ``UNDERWAY`` below the run's start level (the run is learning)."""
    return start is not None and math.isfinite(level) and level < start - UNDERWAY * abs(start)


def start_level(losses: Sequence[float] | np.ndarray) -> float:
    """A run's start level: the median of its first 3 losses, at most the first one (the loss
    of the initial weights: a too large LR can blow the loss up from the second step on)."""
    head = list(losses)[:3]
    return min(head[0], segment_level(head)) if head else math.nan


def _most_in_a_window(flags: np.ndarray, window: int) -> int:
    """The most ``True`` among any ``window`` consecutive flags (fewer for a shorter array)."""
    if flags.size <= window:
        return int(flags.sum())
    counts = np.convolve(flags.astype(int), np.ones(window, dtype=int), mode="valid")
    return int(counts.max())


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
    margin = _MEDIAN_SE3 * segment_noise(y) / math.sqrt(y.size)
    if level - ref > _rise_threshold(ref, margin):
        return f"loss rose to {level:.4g} (median of {y.size} steps) from {ref:.4g}"
    return None


@dataclass(frozen=True)
class Verdict:
    """The guard's judgement of one segment: ``kind`` is ``ok``, ``suspect`` or ``diverged``."""

    kind: str
    reason: str = ""


def judge_segment(
    losses: Sequence[float],
    ref: float | None,
    start: float | None = None,
    noise: float | None = None,
    before: Sequence[float] = (),
    early: bool = False,
) -> Verdict:
    """May training go on from where this segment ended (see the module doc)?

    ``ref``: the lowest level of the run's healthy windows so far (None: none yet; the
    segment's own start level is used). ``start``: the run's start level (for the progress
    terms; None: none). ``noise``: the robust standard deviation of the losses of a healthy
    window (None: unknown; estimated from the segment's second half). ``before``: the previous segment's last losses,
    when training went on from where it ended (spikes across the boundary). ``early``: the run
    is not under way yet (see the module doc; needs ``start``)."""
    y = np.asarray(list(losses), dtype=float)
    if y.size == 0:
        return Verdict("ok")
    bad = int(np.sum(~np.isfinite(y)))
    if bad:
        return Verdict("diverged", f"{bad} non-finite loss(es) in {y.size} steps")
    if ref is None or not math.isfinite(ref):
        if y.size < 2 * TAIL_MIN:  # too short to tell its start from what follows
            return Verdict("ok")
        ref = start_level(y)
    if (noise is None or not math.isfinite(noise)) and y.size >= 2 * TAIL_MIN:
        # No healthy window yet: the noise of the segment's second half (a blow-up at the very
        # start of a run is over by then; one that is not shows as a rise or a spike anyway).
        noise = segment_noise(y[y.size // 2 :])
    noisy = noise is not None and math.isfinite(noise)
    k = min(y.size, max(TAIL_MIN, math.ceil(y.size / 4)))
    margin = _MEDIAN_SE3 * noise / math.sqrt(k) if noisy else 0.0
    end = float(np.median(y[-k:]))
    if end - ref > _rise_threshold(ref, margin, start):
        return Verdict("diverged", f"loss rose to {end:.4g} (median of the last {k} steps) from {ref:.4g}")
    spike = ref + _rise_threshold(ref, 3 * noise if noisy else 0.0, start, SPIKE_RISE, SPIKE_PROGRESS)
    if early and start is not None and math.isfinite(start):
        spike = min(spike, start + max((EARLY_RISE - 1) * abs(start), 3 * noise if noisy else 0.0))
    above = y > spike
    prior = np.asarray(list(before)[-(SPIKE_WINDOW - 1) :], dtype=float)
    prior = prior[np.isfinite(prior)] > spike
    most = _most_in_a_window(np.concatenate([prior, above]), SPIKE_WINDOW)
    if most >= SPIKE_COUNT:
        return Verdict(
            "diverged",
            f"a spike: {most} of {SPIKE_WINDOW} losses in a row above {spike:.4g} (up to "
            f"{float(y.max()):.4g}; level {ref:.4g})",
        )
    if above.any():
        return Verdict(
            "suspect", f"{int(above.sum())} loss(es) above {spike:.4g} (up to {float(y.max()):.4g}; level {ref:.4g})"
        )
    return Verdict("ok")
