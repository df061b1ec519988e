"""What the divergence guard (:mod:`autolrs.tuners.guard`) knows of the loss, and its verdict on
each segment (the rules: :func:`autolrs.divergence.judge_segment`).

The reference a segment is judged against is the lowest level of the healthy windows since the
run began (before there is one, the run's start level), with the noise of the last healthy
window. A window is the healthy losses since the guard's last snapshot; one of ``guard_every``
steps gives a level and a noise. Until the loss has fallen below its start level (or after
``EARLY_WINDOWS`` healthy windows) the run is not under way: the early spike rule applies and
the snapshot stays the one the run started from.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from autolrs import divergence

__all__ = ["EARLY_WINDOWS", "LossWatch"]

#: Healthy windows after which the run counts as under way even if its loss has not fallen.
EARLY_WINDOWS = 10


class LossWatch:
    """The loss levels of one guarded run (see the module doc)."""

    def __init__(self) -> None:
        self.window: list[float] = []  # healthy losses since the snapshot
        self.window_steps = 0  # steps since the snapshot
        self.tail: list[float] = []  # the last losses of the segment training went on from
        self.ref: float | None = None  # lowest level of the healthy windows
        self.noise: float | None = None  # robust std of the last healthy window
        self.start: float | None = None  # the run's start level (median of its first losses)
        self.underway = False  # the loss has fallen below its start level (see divergence.under_way)
        self.early_windows = 0  # healthy windows before that

    def judge(self, losses: Sequence[float], steps: int) -> divergence.Verdict:
        """The verdict on a segment of ``steps`` steps; the losses of one that did not diverge
        join the window."""
        if self.start is None and losses:
            level = divergence.start_level(losses)
            if math.isfinite(level):
                self.start = level
        # Until a healthy window gives a level (and a noise), the run's start is the reference.
        ref = self.ref if self.ref is not None else self.start
        verdict = divergence.judge_segment(
            losses, ref, self.start, self.noise, before=self.tail, early=not self.underway
        )
        self.tail = [] if verdict.kind == "diverged" else list(losses[-divergence.SPIKE_WINDOW :])
        self.window_steps += max(0, steps)
        if verdict.kind != "diverged":
            self.window += [x for x in losses if math.isfinite(x)]
        return verdict

    def close_window(self) -> bool:
        """Take a healthy window's level and noise; whether the run is under way now (its state
        may then be saved as the last good one)."""
        level = divergence.segment_level(self.window)
        if math.isfinite(level):
            self.ref = level if self.ref is None else min(self.ref, level)
            self.noise = divergence.segment_noise(self.window)
        if not self.underway:
            # Until the run is learning, the snapshot stays the one it started from: a network
            # that a too large LR killed at once looks no worse than at its start.
            self.early_windows += 1
            self.underway = divergence.under_way(level, self.start) or self.early_windows >= EARLY_WINDOWS
        return self.underway

    def new_window(self) -> None:
        """The guard's snapshot was taken or restored: a window starts."""
        self.window, self.window_steps = [], 0

    def state_dict(self) -> dict:
        return {
            "window": list(self.window),
            "window_steps": self.window_steps,
            "tail": list(self.tail),
            "ref": self.ref,
            "noise": self.noise,
            "start": self.start,
            "underway": self.underway,
            "early_windows": self.early_windows,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.window, self.window_steps = [float(x) for x in state["window"]], int(state["window_steps"])
        self.tail = [float(x) for x in state["tail"]]
        self.ref, self.noise, self.start = state["ref"], state["noise"], state["start"]
        self.underway = bool(state["underway"])
        self.early_windows = int(state["early_windows"])
