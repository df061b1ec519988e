"""The tuner contract every algorithm follows.

A tuner is a deterministic state machine built from ``(config, seed)``:

* ``ask()`` returns the plan (list of actions, see :mod:`autolrs.actions`) the client should
  carry out now. It has no side effects: asking twice gives the same plan.
* ``tell(observation)`` is the only method that changes state.
* ``state_dict()`` is JSON-serialisable (non-finite floats allowed: the protocol encodes them)
  and ``load_state_dict()`` restores it exactly, so a restarted server resumes a job.

A tuner takes no socket, clock or logger. A non-finite loss is an observation, never a crash.
"""

from __future__ import annotations

import abc
import math
from typing import Any, Callable, ClassVar, Mapping

from autolrs import actions
from autolrs.actions import Observation
from autolrs.errors import ConfigError, did_you_mean

#: Keys the server fills in from the job's hello; every tuner accepts them.
JOB_KEYS: dict[str, Any] = {
    "initial_lr": None,  # the optimizer's LR when the job started (param group 0)
    "max_steps": None,  # the job's total step budget, when the client knows it
    "has_val_fn": False,  # whether the client can evaluate (``evaluate`` / ``eval_every``)
    "has_probe_fn": False,  # whether the client can carry out ``probe`` (it has a ``probe_fn``)
}

#: The largest step count any knob or job may name (``max_steps``, a schedule's period, ...):
#: about 11 days at a step per millisecond. Bounds the work a job's requests can ask for.
MAX_STEPS = 10**9
#: The largest ``chunk`` of any tuner: the most per-step LRs one plan carries and the most
#: losses one report holds.
MAX_CHUNK = actions.MAX_RUN_LRS


class Tuner(abc.ABC):
    #: Registry name.
    name: ClassVar[str] = ""
    #: Every knob: ``name -> (default, meaning)``. The one source of the knobs: :attr:`defaults`
    #: is derived from it, configs are checked against it, ``autolrs-server tuners`` lists it.
    knobs: ClassVar[dict[str, tuple[Any, str]]] = {}
    #: Every knob with its default (from :attr:`knobs`). Keys outside this and JOB_KEYS are rejected.
    defaults: ClassVar[dict[str, Any]] = {}
    #: Renamed knobs, ``{old name: new name}``: see :meth:`canonical_config`.
    aliases: ClassVar[dict[str, str]] = {}
    #: The largest value of each integer knob (a length, a count, a period): no job can ask the
    #: server for more memory or work than these allow. Every integer knob has one (the tuner
    #: contract test checks); the checks run before the tuner's own (:func:`check_limits`).
    limits: ClassVar[dict[str, int]] = {}

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        if "knobs" in cls.__dict__:
            cls.defaults = {name: default for name, (default, _meaning) in cls.knobs.items()}

    def __init__(self, config: Mapping[str, Any] | None = None, seed: int = 0):
        config, notes = self.canonical_config(config or {})
        #: A note per deprecated knob name the config used (the server passes them to the client).
        self.deprecations: list[str] = notes
        self.config = resolve_config(self.name, {**JOB_KEYS, **self.defaults}, config, self.public_name)
        check_limits(self.name, self.config, {"max_steps": MAX_STEPS, **self.limits}, self.public_name)
        self.seed = int(seed)
        #: Advice for the user about this job's set-up (e.g. a missing ``max_steps``): the server
        #: sends it in the hello reply and the callback shows each once as a warning.
        self.notices: list[str] = []
        if self.config["max_steps"] is not None:
            self.config["max_steps"] = require_int(self.config, "max_steps", minimum=1)

    @abc.abstractmethod
    def ask(self) -> list[dict]:
        """The plan for the client now (ends with ``run`` or ``stop``)."""

    @abc.abstractmethod
    def tell(self, observation: Observation) -> None:
        """Take the report of the segment the last plan asked for."""

    @abc.abstractmethod
    def state_dict(self) -> dict:
        """Everything needed to continue, JSON-serialisable."""

    @abc.abstractmethod
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""

    @abc.abstractmethod
    def lr_bounds(self) -> tuple[float, float]:
        """The closed interval every LR this tuner sends lies in."""

    def summary(self) -> dict:
        """A few numbers for status listings and logs (override to add more)."""
        return {}

    def in_search(self) -> bool:
        """Whether the plan ``ask()`` returns now belongs to a search (trials, a sweep, probes)
        whose runs are undone or whose divergence is information. The server marks such a
        plan's ``run`` (``"search": true``), so that a client cut off from the server at its
        end does not train on at a trial's LR; the divergence guard
        (:mod:`autolrs.tuners.guard`) leaves such plans alone."""
        return False

    def resume(self, step: int) -> None:
        """The job's trainer restarted from its own checkpoint at global step ``step``: a new
        process with that step's weights and none of the checkpoint slots earlier plans saved.
        Go on from there: the next ``ask()`` must start at ``step`` and restore no slot saved
        before. Default: nothing (a tuner whose plans restore no earlier slot and do not depend
        on the step)."""

    def ask_next(self) -> list[dict] | None:
        """The plan that follows ``ask()``'s whatever the coming report says, when the tuner
        knows it already (a schedule's next chunk), else None. It must be what ``ask()`` returns
        after a ``tell`` of the report that ends the current run. The server sends it along
        (``next``) so that a client whose report goes unanswered stays on plan meanwhile. No
        side effects, like ``ask()``."""
        return None

    @classmethod
    def canonical_config(cls, config: Mapping[str, Any]) -> tuple[dict, list[str]]:
        """``config`` with each renamed knob under the key this tuner reads, and a deprecation
        note for each old name used. Both names of an :attr:`aliases` pair are accepted (not
        together); the new one is the documented spelling, and whichever of the two is in
        :attr:`defaults` is the key the tuner's code reads, so a tuner can switch its own key
        to the new name without breaking configs that use the old one."""
        out, notes = dict(config), []
        for old, new in cls.aliases.items():
            key = new if new in cls.defaults else old
            other = old if key == new else new
            if other in out:
                if key in out:
                    raise ConfigError(f"{cls.name}: option {new!r} was given twice, also as {old!r}; give it once")
                out[key] = out.pop(other)
            if old in config:
                notes.append(f"{cls.name}: option {old!r} is deprecated; use {new!r}")
        return out, notes

    @classmethod
    def public_name(cls, key: str) -> str:
        """The documented spelling of a key of :attr:`defaults`."""
        return cls.aliases.get(key, key)

    def on_rollback(self, factor: float, info: Mapping[str, Any]) -> None:
        """The divergence guard undid training back to its last good snapshot and multiplied
        the LR by ``factor`` (< 1): make the later plans follow. ``info`` has ``step``,
        ``to_step``, ``steps_back``, ``lr_before`` (None if unknown), ``reason``, ``rollbacks``
        and ``strikes``. Called before the observation of the run in flight is told (without
        the undone segments). Default: nothing (the guard still cuts the run in flight and sets
        the cut LR once after the restore)."""

    def base_lr(self) -> float:
        """The tuner's ``lr`` knob if set, else the optimizer's initial LR."""
        lr = self.config.get("lr")
        if lr is None:
            lr = self.config["initial_lr"]
        if lr is None:
            raise ConfigError(f"{self.name}: set 'lr' or start the job with an optimizer LR")
        return require_positive(lr, "lr")


def resolve_config(
    name: str, defaults: Mapping[str, Any], config: Mapping[str, Any], public_name: Callable[[str], str] = str
) -> dict:
    """Merge ``config`` over ``defaults``; reject unknown keys (listing the valid ones by their
    ``public_name``) and coerce numeric strings."""
    unknown = sorted(set(config) - set(defaults))
    if unknown:
        # The facts the server fills in from the hello are not the user's to set: not listed.
        valid = sorted(public_name(key) for key in defaults if key not in JOB_KEYS)
        hints = "".join(did_you_mean(key, valid) for key in unknown)
        raise ConfigError(f"{name}: unknown option(s) {', '.join(unknown)}{hints}; valid: {', '.join(valid)}")
    merged = dict(defaults)
    for key, value in config.items():
        default = defaults[key]
        # YAML 1.1 reads "1e-3" as a string; accept numeric strings for numeric knobs.
        if isinstance(value, str) and (
            isinstance(default, (int, float)) and not isinstance(default, bool) or default is None
        ):
            try:
                value = float(value) if not value.lstrip("-").isdigit() else int(value)
            except ValueError:
                if default is not None:
                    raise ConfigError(f"{name}: option {key!r} must be a number, got {value!r}") from None
        merged[key] = value
    return merged


def check_limits(
    name: str, config: Mapping[str, Any], limits: Mapping[str, int], public_name: Callable[[str], str] = str
) -> None:
    """Refuse a knob above its limit (ConfigError naming it). Values of other types are left to
    the tuner's own checks, which say what the knob must be."""
    for key, cap in limits.items():
        value = config.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not value <= cap:
            raise ConfigError(
                f"{name}: option {public_name(key)!r} is {value!r}; at most {cap} (a limit of the "
                "server: each job's memory and work are bounded)"
            )


def require_positive(value: Any, key: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"option {key!r} must be a finite number > 0, got {value!r}")
    return float(value)


def require_nonnegative(value: Any, key: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"option {key!r} must be a finite number >= 0, got {value!r}")
    return float(value)


def require_int(config: Mapping[str, Any], key: str, minimum: int = 0) -> int:
    value = config[key]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"option {key!r} must be an integer >= {minimum}, got {value!r}")
    return value
