"""Tuner registry: ``TUNERS`` maps a name to its class; ``make_tuner`` builds one."""

from __future__ import annotations

from typing import Any, Mapping

from autolrs.tuners.auto import AutoTuner
from autolrs.tuners.autolrs_tuner import AutoLRSTuner
from autolrs.errors import did_you_mean
from autolrs.tuners.base import JOB_KEYS, ConfigError, Tuner
from autolrs.tuners.hypergradient import HDTuner, MartheTuner, RTHOTuner
from autolrs.tuners.loss_diff import LossDiffTuner
from autolrs.tuners.range_test import RangeTestTuner
from autolrs.tuners.record import RecordTuner
from autolrs.tuners.schedules import ConstantTuner, CosineTuner, ExponentialTuner, StepTuner

TUNERS: dict[str, type[Tuner]] = {}


class UnknownTunerError(LookupError):
    pass


def register(cls: type[Tuner]) -> type[Tuner]:
    if not cls.name or cls.name in TUNERS:
        raise ValueError(f"tuner name {cls.name!r} is empty or taken")
    TUNERS[cls.name] = cls
    return cls


for _cls in (ConstantTuner, StepTuner, ExponentialTuner, CosineTuner, AutoLRSTuner, RangeTestTuner,
             HDTuner, RTHOTuner, MartheTuner, RecordTuner, LossDiffTuner, AutoTuner):
    register(_cls)


def make_tuner(name: str, config: Mapping[str, Any] | None = None, seed: int = 0) -> Tuner:
    """Build a registered tuner; raises UnknownTunerError or ConfigError with a clear message."""
    try:
        cls = TUNERS[name]
    except KeyError:
        raise UnknownTunerError(f"unknown tuner {name!r}{did_you_mean(name, TUNERS)}; registered: "
                                f"{', '.join(sorted(TUNERS))}") from None
    return cls(config, seed)


__all__ = ["TUNERS", "JOB_KEYS", "ConfigError", "Tuner", "UnknownTunerError", "make_tuner", "register"]
