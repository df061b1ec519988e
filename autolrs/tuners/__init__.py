"""Tuner registry: ``TUNERS`` maps a name to its class; ``make_tuner`` builds one.

The built-in tuners' modules are imported on first use of their name, so a server starts (and
serves a ``cosine`` job) without importing scipy and scikit-learn, which only the ``autolrs``
tuner needs. ``TUNERS`` is a read-only mapping; :func:`register` adds a tuner class.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any

from autolrs.errors import did_you_mean
from autolrs.tuners import guard, guard_knobs
from autolrs.tuners.base import JOB_KEYS, ConfigError, Tuner

#: Built-in tuners: name -> (module, class), in the order ``autolrs-server tuners`` lists them.
BUILTIN = {
    "constant": ("autolrs.tuners.schedules", "ConstantTuner"),
    "step": ("autolrs.tuners.schedules", "StepTuner"),
    "exponential": ("autolrs.tuners.schedules", "ExponentialTuner"),
    "cosine": ("autolrs.tuners.schedules", "CosineTuner"),
    "autolrs": ("autolrs.tuners.autolrs_tuner", "AutoLRSTuner"),
    "range_test": ("autolrs.tuners.range_test", "RangeTestTuner"),
    "hd": ("autolrs.tuners.hypergradient", "HDTuner"),
    "rtho": ("autolrs.tuners.hypergradient", "RTHOTuner"),
    "marthe": ("autolrs.tuners.hypergradient", "MartheTuner"),
    "record": ("autolrs.tuners.record", "RecordTuner"),
    "loss_diff": ("autolrs.tuners.loss_diff", "LossDiffTuner"),
    "auto": ("autolrs.tuners.auto", "AutoTuner"),
}


class UnknownTunerError(LookupError):
    pass


class Registry(Mapping):
    """Tuner classes by name; a built-in one is imported the first time it is looked up."""

    def __init__(self, builtin: Mapping[str, tuple[str, str]]):
        self._where = dict(builtin)
        self._classes: dict[str, type[Tuner]] = {}

    def __getitem__(self, name: str) -> type[Tuner]:
        cls = self._classes.get(name)
        if cls is None:
            module, attr = self._where[name]  # KeyError for an unknown name, as a dict
            cls = getattr(importlib.import_module(module), attr)
            if cls.name != name:
                raise RuntimeError(f"tuner class {module}.{attr} is named {cls.name!r}, registered as {name!r}")
            self._classes[name] = cls
        return cls

    def __contains__(self, name: object) -> bool:
        return name in self._where

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def add(self, cls: type[Tuner]) -> None:
        if not cls.name or cls.name in self._where:
            raise ValueError(f"tuner name {cls.name!r} is empty or taken")
        self._where[cls.name] = (cls.__module__, cls.__qualname__)
        self._classes[cls.name] = cls


TUNERS: Registry = Registry(BUILTIN)


def register(cls: type[Tuner]) -> type[Tuner]:
    TUNERS.add(cls)
    return cls


#: Tuners the guard is off for unless a job asks for it (``guard: true``): ``record`` promises
#: never to send an LR (the client owns it), and ``auto`` rolls back on its own.
GUARD_OFF_BY_DEFAULT = frozenset({"auto", "record"})


def make_tuner(name: str, config: Mapping[str, Any] | None = None, seed: int = 0) -> Tuner:
    """Build a registered tuner, wrapped in the divergence guard (:mod:`autolrs.tuners.guard`)
    unless its config says ``guard: false``; raises UnknownTunerError or ConfigError with a
    clear message. The guard's knobs (``guard``, ``guard_every``, ``guard_factor``,
    ``guard_max``) are accepted by every tuner."""
    try:
        cls = TUNERS[name]
    except KeyError:
        raise UnknownTunerError(
            f"unknown tuner {name!r}{did_you_mean(name, TUNERS)}; registered: {', '.join(sorted(TUNERS))}"
        ) from None
    config = dict(config or {})
    if name in GUARD_OFF_BY_DEFAULT:
        config.setdefault("guard", False)
    knobs, rest = guard_knobs.split_config(config)
    knobs = guard_knobs.check_knobs(knobs)
    inner = cls(rest, seed)
    if not knobs["guard"]:
        return inner
    return guard.Guarded(
        inner, every=knobs["guard_every"], factor=knobs["guard_factor"], max_rollbacks=knobs["guard_max"]
    )


def __getattr__(name: str) -> Any:
    """The tuner classes by their class names (``from autolrs.tuners import CosineTuner``)."""
    for module, attr in BUILTIN.values():
        if attr == name:
            return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BUILTIN",
    "TUNERS",
    "JOB_KEYS",
    "ConfigError",
    "Registry",
    "Tuner",
    "UnknownTunerError",
    "make_tuner",
    "register",
]
