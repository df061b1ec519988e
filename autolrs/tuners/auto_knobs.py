"""The ``auto`` tuner's knobs, and the settings it derives from them: the LRs the sweep spans
and the step counts of each phase (:class:`autolrs.tuners.auto.AutoTuner`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from autolrs import lr_curve
from autolrs.tuners.base import MAX_CHUNK, ConfigError, require_int, require_positive

__all__ = ["KNOBS", "LIMITS", "Settings", "read_settings"]

#: name -> (default, meaning), as a tuner's ``knobs``.
KNOBS: dict[str, tuple[Any, str]] = {
    "sweep_min": (None, "the sweep's first LR; None: initial_lr / 1e4"),
    "sweep_max": (None, "the sweep's last LR; None: initial_lr * 1000"),
    "sweep_fraction": (
        0.05,
        "share of max_steps the range test takes (30 to 100 steps; at most a tenth of a small budget)",
    ),
    "rule": ("minimum", "range-test rule giving the candidates' centre"),
    "candidates": (3, "LRs tried, spaced by `spacing` around the rule's LR"),
    "spacing": (2.0, "factor between neighbouring candidates' LRs"),
    "trial_fraction": (0.03, "share of max_steps each trial takes (at least 5 steps)"),
    "warmup_fraction": (0.02, "share of max_steps: the linear ramp to the peak"),
    "check_fraction": (0.05, "share of max_steps between two reports (and val_fn calls)"),
    "cut": (0.5, "LR factor after a rollback"),
    "max_cuts": (5, "rollbacks before a divergence stops the job"),
    "use_val": (True, "score trials and watch overfitting on val_fn when there is one"),
}
LIMITS: dict[str, int] = {"candidates": 20, "max_cuts": 100}
FRACTIONS = ("sweep_fraction", "trial_fraction", "warmup_fraction", "check_fraction")


@dataclass(frozen=True)
class Settings:
    """What :class:`~autolrs.tuners.auto.AutoTuner` runs with, checked."""

    max_steps: int
    initial_lr: float  # the optimizer's LR (the sweep's first LR when it has none)
    sweep_min: float
    sweep_max: float
    rule: str
    n_candidates: int
    spacing: float
    cut: float
    max_cuts: int
    use_val: bool  # use_val and the job has a val_fn
    sweep_steps: int
    trial_steps: int
    check_steps: int
    warmup_fraction: float


def read_settings(c: Mapping[str, Any]) -> Settings:
    """The settings of a tuner config (knobs with defaults, and the job's facts:
    ``max_steps``, ``initial_lr``, ``has_val_fn``); ConfigError names a bad knob."""
    n = c["max_steps"]
    if n is None:
        raise ConfigError(
            "auto: needs max_steps (the number of optimizer steps the job will take); pass max_steps= to the callback"
        )
    initial = c["initial_lr"]
    if c["sweep_min"] is None or c["sweep_max"] is None:
        if initial is None or not (isinstance(initial, (int, float)) and initial > 0 and math.isfinite(initial)):
            raise ConfigError("auto: set sweep_min and sweep_max, or start the job with an optimizer LR")
    sweep_min = require_positive(c["sweep_min"] if c["sweep_min"] is not None else initial / 1e4, "sweep_min")
    sweep_max = require_positive(c["sweep_max"] if c["sweep_max"] is not None else initial * 1000, "sweep_max")
    if not sweep_min < sweep_max:
        raise ConfigError(f"auto: sweep_min ({sweep_min}) must be below sweep_max ({sweep_max})")
    for key in FRACTIONS:
        value = c[key]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
            raise ConfigError(f"auto: {key} must be in [0, 1), got {value!r}")
    if c["rule"] not in lr_curve.METHODS:
        raise ConfigError(f"auto: rule must be one of {', '.join(lr_curve.METHODS)}, got {c['rule']!r}")
    cut = require_positive(c["cut"], "cut")
    if cut >= 1:
        raise ConfigError(f"auto: cut must be below 1, got {cut}")
    if not isinstance(c["use_val"], bool):
        raise ConfigError(f"auto: use_val must be true or false, got {c['use_val']!r}")
    # At least 30 points (fewer only when that is over a tenth of a small budget), at most 100.
    sweep_steps = min(100, max(round(c["sweep_fraction"] * n), min(30, round(0.1 * n)), 5))
    trial_steps = max(5, round(c["trial_fraction"] * n))
    check_steps = max(10, round(c["check_fraction"] * n))
    for key, steps in (("trial_fraction", trial_steps), ("check_fraction", check_steps)):
        if steps > MAX_CHUNK:  # those runs carry an LR per step
            raise ConfigError(f"auto: {key} of max_steps is {steps} steps per report; at most {MAX_CHUNK}: lower {key}")
    return Settings(
        max_steps=n,
        initial_lr=float(initial) if initial else sweep_min,
        sweep_min=sweep_min,
        sweep_max=sweep_max,
        rule=c["rule"],
        n_candidates=require_int(c, "candidates", minimum=1),
        spacing=require_positive(c["spacing"], "spacing"),
        cut=cut,
        max_cuts=require_int(c, "max_cuts", minimum=0),
        use_val=c["use_val"] and bool(c["has_val_fn"]),
        sweep_steps=sweep_steps,
        trial_steps=trial_steps,
        check_steps=check_steps,
        warmup_fraction=float(c["warmup_fraction"]),
    )
