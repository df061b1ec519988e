"""The divergence guard's knobs, accepted by every tuner (:func:`autolrs.tuners.make_tuner`
strips them before building the tuner and wraps it in :class:`autolrs.tuners.guard.Guarded`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from autolrs.tuners.base import MAX_CHUNK, ConfigError, check_limits, require_int, require_positive

__all__ = ["DEFAULTS", "KNOBS", "LIMITS", "check_knobs", "default_every", "split_config"]

#: The guard's knobs, accepted by every tuner (:func:`autolrs.tuners.make_tuner` strips them):
#: name -> (default, meaning), as a tuner's ``knobs``.
KNOBS: dict[str, tuple[Any, str]] = {
    "guard": (
        True,
        "watch training for divergence (false: the tuner alone, unwrapped; off by default for auto and record)",
    ),
    "guard_every": (None, "steps per segment at most and between two snapshots; null: 2% of max_steps, 10 to 100"),
    "guard_factor": (0.5, "LR factor of each rollback"),
    "guard_max": (5, "rollbacks in a row without a healthy window; one more divergence stops the job"),
}
DEFAULTS: dict[str, Any] = {name: default for name, (default, _meaning) in KNOBS.items()}
#: The largest value of each integer knob, as a tuner's ``limits``: a segment's losses are a
#: report's and live in the job's state until its window is judged.
LIMITS: dict[str, int] = {"guard_every": MAX_CHUNK, "guard_max": 100}
#: The default segment: this share of max_steps, within [MIN_EVERY, MAX_EVERY].
EVERY_FRACTION, MIN_EVERY, MAX_EVERY = 0.02, 10, 100


def split_config(config: Mapping[str, Any] | None) -> tuple[dict, dict]:
    """``(guard knobs with defaults, the rest)`` of a tuner config."""
    config = dict(config or {})
    knobs = {key: config.pop(key, default) for key, default in DEFAULTS.items()}
    return knobs, config


def check_knobs(knobs: Mapping[str, Any]) -> dict:
    """Validate the guard's knobs; ConfigError names the bad one."""
    if not isinstance(knobs["guard"], bool):
        raise ConfigError(f"option 'guard' must be true or false, got {knobs['guard']!r}")
    check_limits("guard", knobs, LIMITS)
    every = None if knobs["guard_every"] is None else require_int(knobs, "guard_every", minimum=1)
    factor = require_positive(knobs["guard_factor"], "guard_factor")
    if factor >= 1:
        raise ConfigError(f"option 'guard_factor' must be below 1, got {factor}")
    return {
        "guard": knobs["guard"],
        "guard_every": every,
        "guard_factor": factor,
        "guard_max": require_int(knobs, "guard_max", minimum=0),
    }


def default_every(max_steps: int | None) -> int:
    """``guard_every`` unless set: 2 % of the job's steps, between 10 and 100 (100 when the
    budget is unknown). A rollback undoes at most the segment it was detected in, so the
    segment bounds what one spike costs; each segment costs one report and one copy."""
    if max_steps is None:
        return MAX_EVERY
    return max(MIN_EVERY, min(MAX_EVERY, round(EVERY_FRACTION * max_steps)))
