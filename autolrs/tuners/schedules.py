"""Fixed schedules: constant, step (staircase), exponential and cosine with warm restarts.

They need no feedback, so the server sends the LR of every step of a long segment in one
reply (``chunk`` steps, default 500) instead of talking every step. The arithmetic follows
``torch.optim.lr_scheduler`` operation for operation (chained multiplication for step and
exponential decay, the same cosine expression), so a job matches the torch scheduler stepped
once per optimizer step exactly, not just approximately.

State is the schedule's position: the step the next segment starts at and the recurrence
variables there. Going back (never needed in practice) replays from step 0. A report more than
:data:`REPLAY_LIMIT` steps ahead (a client that trained long without the server) jumps there in
closed form instead, so no request costs more than that many recurrence steps; the LRs after
such a jump may differ from torch's chained products in the last bits. After a rollback of
the divergence guard every later LR is multiplied by ``scale``, the product of the guard's cuts.

The next chunk is known before the report that ends the current one (:meth:`ask_next`): the
client holds it and stays on the schedule through an outage shorter than a chunk.
"""

from __future__ import annotations

import abc
import math
from typing import Any, Mapping

from autolrs import actions
from autolrs.actions import Observation
from autolrs.tuners.base import (
    MAX_CHUNK,
    MAX_STEPS,
    ConfigError,
    Tuner,
    require_int,
    require_nonnegative,
    require_positive,
)

#: Steps a report may move a schedule by recurrence; further, :meth:`ScheduleTuner._at` jumps.
REPLAY_LIMIT = 100_000


class ScheduleTuner(Tuner):
    """A schedule as a recurrence: ``_initial()`` gives step 0's variables, ``_next`` the next."""

    knobs = {
        "lr": (None, "the LR the schedule starts from; null: the optimizer's"),
        "chunk": (500, "steps whose LRs one reply carries"),
    }
    limits = {"chunk": MAX_CHUNK}

    def __init__(self, config: Mapping[str, Any] | None = None, seed: int = 0):
        super().__init__(config, seed)
        self.lr0 = self.base_lr()
        self.chunk = require_int(self.config, "chunk", minimum=1)
        self._validate()
        self.step = 0
        self.vars = self._initial()
        self.scale = 1.0  # the divergence guard's cuts so far

    def _validate(self) -> None:
        """Check the schedule's own knobs (raise ConfigError)."""

    @abc.abstractmethod
    def _initial(self) -> dict:
        """Recurrence variables at step 0."""

    @abc.abstractmethod
    def _next(self, v: dict, step: int) -> dict:
        """Variables at ``step`` given those at ``step - 1`` (``step`` >= 1)."""

    @abc.abstractmethod
    def _lr(self, v: dict) -> float:
        """The LR at a step from its variables."""

    @abc.abstractmethod
    def _at(self, step: int) -> dict:
        """The variables at ``step`` in closed form (for jumps beyond REPLAY_LIMIT)."""

    def _advance(self, v: dict, frm: int, to: int) -> dict:
        for s in range(frm + 1, to + 1):
            v = self._next(v, s)
        return v

    def ask(self) -> list[dict]:
        return self._plan(self.step, self.vars)

    def ask_next(self) -> list[dict] | None:
        """The chunk after the current one (None when the budget ends with the current one)."""
        run = self.ask()[-1]
        if run["op"] != "run":
            return None
        step = self.step + run["steps"]
        plan = self._plan(step, self._advance(self.vars, self.step, step))
        return plan if plan[-1]["op"] == "run" else None

    def _plan(self, step: int, v: dict) -> list[dict]:
        max_steps = self.config["max_steps"]
        if max_steps is not None and step >= max_steps:
            return [actions.stop("max_steps")]
        n = self.chunk if max_steps is None else min(self.chunk, max_steps - step)
        lrs = []
        for i in range(n):
            if i:
                v = self._next(v, step + i)
            lrs.append(self._lr(v) * self.scale)
        return [actions.run(n, step, lrs=lrs)]

    def tell(self, observation: Observation) -> None:
        target = observation.step
        if target < self.step:
            self.step, self.vars = 0, self._initial()
        if target - self.step > REPLAY_LIMIT:
            self.vars = self._at(target)
        else:
            self.vars = self._advance(self.vars, self.step, target)
        self.step = target

    def resume(self, step: int) -> None:
        """A schedule is a function of the step: the trainer's step is where it goes on."""
        self.tell(Observation(step=step))

    def on_rollback(self, factor: float, info: Mapping[str, Any]) -> None:
        """Scale what remains of the schedule."""
        self.scale *= factor

    def state_dict(self) -> dict:
        return {"step": self.step, "vars": dict(self.vars), "scale": self.scale}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step = int(state["step"])
        self.vars = dict(state["vars"])
        self.scale = float(state.get("scale", 1.0))

    def summary(self) -> dict:
        return {"step": self.step, "lr": self._lr(self.vars) * self.scale}


class ConstantTuner(ScheduleTuner):
    """One LR for the whole run: ``lr`` (default: the optimizer's)."""

    name = "constant"

    def _initial(self) -> dict:
        return {}

    def _next(self, v: dict, step: int) -> dict:
        return v

    def _lr(self, v: dict) -> float:
        return self.lr0

    def _at(self, step: int) -> dict:
        return {}

    def lr_bounds(self) -> tuple[float, float]:
        return (self.lr0, self.lr0)


class StepTuner(ScheduleTuner):
    """Staircase decay, as ``StepLR``: multiply by ``gamma`` every ``step_size`` steps."""

    name = "step"
    knobs = {
        **ScheduleTuner.knobs,
        "step_size": (1000, "steps between two decays"),
        "gamma": (0.1, "LR factor of each decay"),
    }
    limits = {**ScheduleTuner.limits, "step_size": MAX_STEPS}

    def _validate(self) -> None:
        self.step_size = require_int(self.config, "step_size", minimum=1)
        self.gamma = require_positive(self.config["gamma"], "gamma")

    def _initial(self) -> dict:
        return {"lr": self.lr0}

    def _next(self, v: dict, step: int) -> dict:
        return {"lr": v["lr"] * self.gamma} if step % self.step_size == 0 else v

    def _at(self, step: int) -> dict:
        return {"lr": self.lr0 * _power(self.gamma, step // self.step_size)}

    def _lr(self, v: dict) -> float:
        return v["lr"]

    def lr_bounds(self) -> tuple[float, float]:
        return (0.0, self.lr0) if self.gamma <= 1 else (self.lr0, math.inf)


class ExponentialTuner(ScheduleTuner):
    """Exponential decay, as ``ExponentialLR``: multiply by ``gamma`` every step."""

    name = "exponential"
    knobs = {**ScheduleTuner.knobs, "gamma": (0.999, "LR factor of every step")}

    def _validate(self) -> None:
        self.gamma = require_positive(self.config["gamma"], "gamma")

    def _initial(self) -> dict:
        return {"lr": self.lr0}

    def _next(self, v: dict, step: int) -> dict:
        return {"lr": v["lr"] * self.gamma}

    def _at(self, step: int) -> dict:
        return {"lr": self.lr0 * _power(self.gamma, step)}

    def _lr(self, v: dict) -> float:
        return v["lr"]

    def lr_bounds(self) -> tuple[float, float]:
        return (0.0, self.lr0) if self.gamma <= 1 else (self.lr0, math.inf)


class CosineTuner(ScheduleTuner):
    """SGDR, as ``CosineAnnealingWarmRestarts``: cycles of ``T_0``, ``T_0*T_mult``, ... steps
    annealing from ``lr`` down towards ``eta_min``."""

    name = "cosine"
    knobs = {
        **ScheduleTuner.knobs,
        "T_0": (1000, "steps of the first cycle"),
        "T_mult": (1, "each cycle is this many times longer than the one before"),
        "eta_min": (0.0, "the LR each cycle anneals towards"),
    }
    limits = {**ScheduleTuner.limits, "T_0": MAX_STEPS, "T_mult": 1000}

    def _validate(self) -> None:
        self.T_0 = require_int(self.config, "T_0", minimum=1)
        self.T_mult = require_int(self.config, "T_mult", minimum=1)
        self.eta_min = require_nonnegative(self.config["eta_min"], "eta_min")
        if self.eta_min > self.lr0:
            raise ConfigError(f"cosine: eta_min {self.eta_min} is above the base LR {self.lr0}")

    def _initial(self) -> dict:
        return {"T_cur": 0, "T_i": self.T_0}

    def _next(self, v: dict, step: int) -> dict:
        T_cur, T_i = v["T_cur"] + 1, v["T_i"]
        if T_cur >= T_i:
            T_cur, T_i = T_cur % T_i, T_i * self.T_mult
        return {"T_cur": T_cur, "T_i": T_i}

    def _at(self, step: int) -> dict:
        if self.T_mult == 1:
            return {"T_cur": step % self.T_0, "T_i": self.T_0}
        T_cur, T_i = step, self.T_0
        while T_cur >= T_i:  # cycles grow geometrically: a few dozen at most
            T_cur, T_i = T_cur - T_i, T_i * self.T_mult
        return {"T_cur": T_cur, "T_i": T_i}

    def _lr(self, v: dict) -> float:
        # Same expression and order of operations as torch, so the floats agree bit for bit.
        return self.eta_min + (self.lr0 - self.eta_min) * (1 + math.cos(math.pi * v["T_cur"] / v["T_i"])) / 2

    def lr_bounds(self) -> tuple[float, float]:
        return (self.eta_min, self.lr0)


def _power(base: float, exponent: int) -> float:
    """``base ** exponent`` that saturates at inf instead of raising OverflowError."""
    try:
        return base**exponent
    except OverflowError:
        return math.inf
