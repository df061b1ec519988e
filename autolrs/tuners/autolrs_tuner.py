"""The ``autolrs`` tuner: AutoLRS's stage machine (:mod:`autolrs.tuners.autolrs_stages`) in its
phases (:mod:`autolrs.tuners.phases`), with the job's knobs checked in one place.

The composition, outermost first::

    FinalAnneal(                                 final_decay, with max_steps: the run that ends
      Sequence(RangeTestTuner,                   lr_min/lr_max "auto": a range test first, whose
        Sequence(LinearWarmup,                     curve sets the search interval
          AutoLRSStages)))                       warmup_steps > 0: a linear ramp, then the stages

Automatic bounds (``lr_min`` and/or ``lr_max`` set to ``"auto"``): an LR range test
(``auto_num_iter`` steps, exponential from ``auto_start_lr`` to ``auto_end_lr``) runs first,
restores the weights it started from, and :func:`autolrs.lr_curve.bounds_from_curve` turns its
raw curve into the interval: ``lr_max`` a third of the LR at the lowest loss (at the minimum a
constant LR is on the edge of divergence), ``lr_min`` where the loss has fallen by 10 % of its
total fall, at least a decade below ``lr_max``. A bound given as a number is kept. The sweep's
steps count against ``max_steps`` (``bounds_steps``); if the curve supports no interval the
defaults are used and ``bounds_source`` says why. Warm-up: ``lr_i = warmup_lr / warmup_steps *
(i + 1)``. Final decay: the run that ends the job anneals the winner's LR to 0.

``preset: paper`` gives every knob the user did not set the published method's choice
(:data:`PAPER`), for comparison.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

from autolrs import gp, lr_curve
from autolrs.actions import Observation
from autolrs.tuners.autolrs_stages import AutoLRSStages, Settings
from autolrs.tuners.base import MAX_STEPS, ConfigError, Tuner, require_int, require_positive
from autolrs.tuners.phases import ANNEALS, FinalAnneal, LinearWarmup, Sequence
from autolrs.tuners.range_test import RangeTestTuner

STATE_VERSION = 4  # 4: the stage machine in its phases; earlier states are not resumed
AUTO = "auto"
DECAYS = ("none",) + ANNEALS
TIE_BREAKS = ("best", "lowest")
PRESETS = ("default", "paper")
#: ``lr_max: auto`` is the range test's loss minimum divided by this: a constant LR at the
#: minimum itself is on the edge of divergence (it collapsed a small CNN; bench/quality.py).
AUTO_BELOW_MINIMUM = 3.0
#: ``preset: paper``: the published method's choices for every knob the user does not set.
PAPER = {
    "keep_best_trial": False,
    "final_decay": "none",
    "loss_floor": None,
    "pessimism": 0.0,
    "tie_break": "best",
    "check_trials": False,
    "val_from": "tau_max",
}


def _finite(value: Any, key: str, minimum: float = -math.inf) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < minimum:
        bound = "" if minimum == -math.inf else f" >= {minimum:g}"
        raise ConfigError(f"option {key!r} must be a finite number{bound}, got {value!r}")
    return float(value)


def _choice(cfg: Mapping[str, Any], key: str, choices: tuple[str, ...]) -> str:
    if cfg[key] not in choices:
        raise ConfigError(f"autolrs: {key} must be one of {', '.join(choices)}, got {cfg[key]!r}")
    return cfg[key]


class AutoLRSTuner(Tuner):
    """Per-stage LR search by Bayesian optimisation on exponential loss forecasts."""

    name = "autolrs"
    #: Documented as lr_min/lr_max like every tuner's bounds; the old spellings still work (deprecated).
    aliases: ClassVar[dict[str, str]] = {"min_lr": "lr_min", "max_lr": "lr_max"}
    knobs: ClassVar[dict[str, tuple[Any, str]]] = {
        "lr_min": (
            None,
            "lower end of the search interval; None: initial_lr / 100, else 1e-3; 'auto': from a range test",
        ),
        "lr_max": (
            None,
            "upper end of the search interval; None: initial_lr * 10, else 1.0; 'auto': from a range test",
        ),
        "auto_start_lr": (1e-6, "first LR of the range test behind 'auto' bounds"),
        "auto_end_lr": (10.0, "last LR of that range test"),
        "auto_num_iter": (100, "steps of that range test"),
        "tau": (1000, "first stage's exploitation length (steps)"),
        "tau_max": (8000, "cap on tau (it doubles every stage)"),
        "k": (10, "candidate LRs (BO evaluations) per stage"),
        "trial_fraction": (0.1, "tau' = round(tau * trial_fraction), at least 1"),
        "acquisition": ("lcb", "acquisition function of the BO search: 'lcb' or 'ei'"),
        "kappa": (1e6, "LCB exploration weight (1e6: pure exploration, as the original)"),
        "warmup_steps": (0, "linear warm-up steps before stage 1"),
        "warmup_lr": (None, "LR the warm-up ends at; None: initial_lr, else sqrt(lr_min * lr_max)"),
        "val_points": (16, "validation evaluations per trial in validation mode"),
        "use_val": (True, "judge trials on validation loss (needs has_val_fn) from `val_from` on"),
        "val_from": ("start", "'start': from stage 1; 'tau_max': once tau reaches tau_max (the paper)"),
        "keep_best_trial": (True, "exploit from the best trial's end weights (one extra copy)"),
        "loss_penalty": (1e6, "forecast recorded for a diverged (NaN/inf) trial"),
        "final_decay": ("cosine", "'cosine', 'linear' or 'none': anneal the run that ends the job (with max_steps)"),
        "loss_floor": (0.0, "forecasts never go below it; null for a loss that can be negative"),
        "pessimism": (1.0, "trials are compared on forecast + pessimism * its standard deviation"),
        "tie_break": ("lowest", "among trials the forecasts cannot tell from the best: 'lowest' LR, or 'best'"),
        "check_trials": (True, "a trial with a rising tail, spikes or outsized noise cannot win"),
        "preset": ("default", "'paper': the published method (the knobs in PAPER), for comparison"),
    }
    limits: ClassVar[dict[str, int]] = {
        "auto_num_iter": 1000,
        "tau": MAX_STEPS,
        "tau_max": MAX_STEPS,
        "k": 100,
        "warmup_steps": MAX_STEPS,
        "val_points": 1000,
    }

    def __init__(self, config: Mapping[str, Any] | None = None, seed: int = 0):
        config = dict(config or {})
        if config.get("preset", "default") not in PRESETS:
            raise ConfigError(f"autolrs: preset must be one of {', '.join(PRESETS)}, got {config['preset']!r}")
        if config.get("preset") == "paper":
            config = {**PAPER, **config}
        super().__init__(config, seed)
        cfg = self.config
        initial = cfg["initial_lr"]
        if not (
            isinstance(initial, (int, float))
            and not isinstance(initial, bool)
            and math.isfinite(initial)
            and initial > 0
        ):
            initial = None  # unknown (or an optimizer LR of 0): nothing to derive from
        self.initial = initial
        self.max_steps = cfg["max_steps"]
        self.auto = {key: cfg[key] == AUTO for key in ("lr_min", "lr_max")}
        for key, auto in self.auto.items():
            if not auto and cfg[key] is not None:
                require_positive(cfg[key], key)  # a typo fails now, not after the range test
        self.warmup_steps = require_int(cfg, "warmup_steps", minimum=0)
        if cfg["warmup_lr"] is not None:
            require_positive(cfg["warmup_lr"], "warmup_lr")
        self.final_decay = _choice(cfg, "final_decay", DECAYS)
        self.stage_knobs = self._stage_knobs()
        self.range_test = RangeTestTuner(self._range_test_config(), seed) if any(self.auto.values()) else None
        if self.range_test is None:
            self._interval = self._checked_interval(cfg["lr_min"], cfg["lr_max"])
        self.bounds_source = "auto (pending range test)" if self.range_test else "config"
        self.bounds_steps = 0
        self.warmup: LinearWarmup | None = None  # once built
        self.core = self._compose()
        if self.max_steps is None:
            self.notices.append(
                "autolrs: no max_steps given, so the stages cannot be planned to the budget and the run is "
                "not annealed at the end; pass max_steps= (the number of optimizer steps) to the callback"
            )

    # ------------------------------------------------------------------ knobs

    def _stage_knobs(self) -> dict:
        """The stage machine's knobs, checked (all but the interval, the budget and the start LR)."""
        cfg = self.config
        tau, tau_max = require_int(cfg, "tau", minimum=1), require_int(cfg, "tau_max", minimum=1)
        if tau_max < tau:
            raise ConfigError(f"autolrs: tau_max ({tau_max}) must be >= tau ({tau})")
        trial_fraction = require_positive(cfg["trial_fraction"], "trial_fraction")
        if trial_fraction > 1:
            raise ConfigError(f"autolrs: trial_fraction must be in (0, 1], got {trial_fraction}")
        acquisition = cfg["acquisition"]
        if not isinstance(acquisition, str) or acquisition.lower() not in gp.ACQUISITIONS:
            raise ConfigError(f"autolrs: acquisition must be one of {', '.join(gp.ACQUISITIONS)}, got {acquisition!r}")
        for key in ("use_val", "keep_best_trial", "check_trials"):
            if not isinstance(cfg[key], bool):
                raise ConfigError(f"option {key!r} must be true or false, got {cfg[key]!r}")
        return {
            "tau": tau,
            "tau_max": tau_max,
            "k": require_int(cfg, "k", minimum=1),
            "trial_fraction": trial_fraction,
            "acquisition": acquisition.lower(),
            "kappa": _finite(cfg["kappa"], "kappa", minimum=0.0),
            "val_points": require_int(cfg, "val_points", minimum=1),
            "use_val": cfg["use_val"] and bool(cfg["has_val_fn"]),
            "val_from_start": _choice(cfg, "val_from", ("tau_max", "start")) == "start",
            "keep_best": cfg["keep_best_trial"],
            "penalty": require_positive(cfg["loss_penalty"], "loss_penalty"),
            "loss_floor": None if cfg["loss_floor"] is None else _finite(cfg["loss_floor"], "loss_floor"),
            "pessimism": _finite(cfg["pessimism"], "pessimism", minimum=0.0),
            "tie_break": _choice(cfg, "tie_break", TIE_BREAKS),
            "check_trials": cfg["check_trials"],
        }

    def _range_test_config(self) -> dict:
        cfg = self.config
        start = require_positive(cfg["auto_start_lr"], "auto_start_lr")
        end = require_positive(cfg["auto_end_lr"], "auto_end_lr")
        if not start < end:
            raise ConfigError(f"autolrs: auto_start_lr ({start}) must be below auto_end_lr ({end})")
        return {
            "start_lr": start,
            "end_lr": end,
            "num_iter": require_int(cfg, "auto_num_iter", minimum=3),
            "initial_lr": self.initial,
            "max_steps": cfg["max_steps"],
        }

    def _checked_interval(self, lr_min: Any, lr_max: Any) -> tuple[float, float]:
        """The search interval; ``None`` takes the default (from ``initial_lr``)."""
        initial = self.initial
        lo = require_positive(lr_min if lr_min is not None else (initial / 100 if initial else 1e-3), "lr_min")
        hi = require_positive(lr_max if lr_max is not None else (initial * 10 if initial else 1.0), "lr_max")
        if not lo < hi:
            raise ConfigError(
                f"autolrs: lr_min ({lo}) must be below lr_max ({hi}); unset bounds come from "
                "initial_lr (/100 and *10), so set both"
            )
        return lo, hi

    def _interval_from(self, rt: Tuner) -> tuple[float, float]:
        """The interval the finished range test supports, or the defaults (``bounds_source``
        says which and why)."""
        assert isinstance(rt, RangeTestTuner)  # the first part of the sequence _compose builds
        history = rt.history
        given = {key: None if self.auto[key] else self.config[key] for key in ("lr_min", "lr_max")}
        self.bounds_steps = max(len(history["lr"]), rt.pos)
        try:
            lo, hi = lr_curve.bounds_from_curve(history["lr"], history["loss"], below_minimum=AUTO_BELOW_MINIMUM)
            lo = lo if self.auto["lr_min"] else given["lr_min"]
            hi = hi if self.auto["lr_max"] else given["lr_max"]
            if not lo < hi:
                raise ValueError(f"the derived bound does not fit the given one ({lo} >= {hi})")
            self.bounds_source = f"range test ({rt.done}, {len(history['lr'])} points)"
            return self._checked_interval(lo, hi)
        except ValueError as exc:
            self.bounds_source = f"defaults: {exc}"
            return self._checked_interval(given["lr_min"], given["lr_max"])

    # ------------------------------------------------------------------ composition

    def _warmup_lr(self, interval: tuple[float, float]) -> float:
        wlr = self.config["warmup_lr"]
        return float(wlr if wlr is not None else (self.initial or math.sqrt(interval[0] * interval[1])))

    def _stages(self, interval: tuple[float, float], start: int) -> AutoLRSStages:
        """The stage machine for the interval, from global step ``start`` on (its own step 0)."""
        self._interval = interval
        lo, hi = interval
        if self.warmup_steps:
            start_lr = self._warmup_lr(interval)
        else:
            start_lr = min(max(self.initial, lo), hi) if self.initial else math.sqrt(lo * hi)
        budget = None if self.max_steps is None else max(0, self.max_steps - start)
        settings = Settings(lr_min=lo, lr_max=hi, max_steps=budget, start_lr=start_lr, **self.stage_knobs)
        return AutoLRSStages(settings, {**self.config, "max_steps": budget}, self.seed)

    def _after_bounds(self, interval: tuple[float, float], start: int) -> Tuner:
        """What follows the interval: warm-up then the stages, or the stages."""
        warmup = self.warmup_steps if self.max_steps is None else min(self.warmup_steps, self.max_steps - start)
        if warmup <= 0:
            return self._stages(interval, start)
        ramp = self.warmup = LinearWarmup(warmup, self._warmup_lr(interval), self.config, self.seed)
        return Sequence(ramp, lambda _, step: self._stages(interval, start + step), self._bounds())

    def _compose(self) -> Tuner:
        if self.range_test is not None:
            core: Tuner = Sequence(
                self.range_test, lambda rt, step: self._after_bounds(self._interval_from(rt), step), self._bounds()
            )
        else:
            core = self._after_bounds(self._interval, 0)
        if self.final_decay != "none" and self.max_steps is not None:
            core = FinalAnneal(core, self.final_decay, self.max_steps)
        return core

    def _bounds(self) -> tuple[float, float]:
        """Every LR the tuner may send: the sweep, the interval (default or given), the ramp."""
        lrs = []
        if self.range_test is not None:
            lrs += list(self.range_test.lr_bounds())
        interval = self._checked_interval(
            None if self.auto["lr_min"] else self.config["lr_min"],
            None if self.auto["lr_max"] else self.config["lr_max"],
        )
        lrs += list(interval)
        if self.initial:
            lrs.append(self.initial)
        if self.warmup_steps:
            wlr = self._warmup_lr(interval)
            lrs += [wlr / self.warmup_steps, wlr]
        return min(lrs), max(lrs)

    # ------------------------------------------------------------------ Tuner API

    def ask(self) -> list[dict]:
        return self.core.ask()

    def tell(self, observation: Observation) -> None:
        self.core.tell(observation)

    def in_search(self) -> bool:
        return self.core.in_search()

    def on_rollback(self, factor: float, info: Mapping[str, Any]) -> None:
        self.core.on_rollback(factor, info)

    def resume(self, step: int) -> None:
        """A trainer restarted from its checkpoint at ``step`` holds none of the stage's slots: a
        range test or a stage in progress starts again from there (its trials were measured
        from weights the trainer no longer has); warm-up and the final run go on at ``step``
        (each part's ``resume``)."""
        self.core.resume(max(0, int(step)))

    def lr_bounds(self) -> tuple[float, float]:
        lo, hi = self._bounds()
        return (0.0 if self.final_decay != "none" and self.max_steps is not None else lo, hi)

    def state_dict(self) -> dict:
        return {
            "version": STATE_VERSION,
            "core": self.core.state_dict(),
            "bounds_source": self.bounds_source,
            "bounds_steps": self.bounds_steps,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"autolrs: unsupported state version {state.get('version')!r}")
        self.core.load_state_dict(state["core"])
        self.bounds_source = str(state["bounds_source"])
        self.bounds_steps = int(state["bounds_steps"])

    @property
    def stages(self) -> list[dict]:
        """The finished stages' records (see :mod:`autolrs.tuners.autolrs_stages`)."""
        machine = self.stage_machine()
        return [] if machine is None else machine.stages

    @property
    def phase(self) -> str:
        """``bounds``, ``warmup``, or the stage machine's phase (``trial``, ``exploit``, ...)."""
        machine = self.stage_machine()
        return self.core_phase() if machine is None else machine.phase

    @property
    def interval(self) -> tuple[float, float] | None:
        """The search interval ``(lr_min, lr_max)`` (below the divergence guard's cut, if any);
        None while the range test runs."""
        machine = self.stage_machine()
        if machine is not None:
            return machine.space.min_lr, machine.space.max_lr
        return None if self.range_test is not None and self.core_phase() == "bounds" else self._interval

    def stage_machine(self) -> AutoLRSStages | None:
        """The stage machine once it runs (None during the range test or the warm-up)."""
        part: Any = self.core.inner if isinstance(self.core, FinalAnneal) else self.core
        while isinstance(part, Sequence):
            part = part.second
        return part

    def summary(self) -> dict:
        out = dict(self.core.summary())
        stages = self.stage_machine()
        search = stages.search_steps if stages is not None else 0
        train = stages.train_steps if stages is not None else 0
        if stages is not None:
            out.setdefault("phase", stages.phase)
        elif self.range_test is not None and self.core_phase() == "bounds":
            out = {"phase": "bounds", "range_test_points": len(self.range_test.history["lr"])}
        total = search + self.bounds_steps + train
        out.update(
            search_steps=search,
            train_steps=train,
            bounds_steps=self.bounds_steps,
            warmup_steps=0 if self.warmup is None else self.warmup.done,
            bounds_source=self.bounds_source,
            overhead=(search + self.bounds_steps) / total if total else 0.0,
        )
        if stages is None and self.range_test is None:
            out.update(lr_min=self._interval[0], lr_max=self._interval[1])
        return out

    def core_phase(self) -> str:
        """``bounds``, ``warmup`` or ``stages``: which part runs now."""
        part: Any = self.core.inner if isinstance(self.core, FinalAnneal) else self.core
        while isinstance(part, Sequence):
            if part.second is None:
                return "bounds" if part.first is self.range_test else "warmup"
            part = part.second
        return "stages"
