"""Gradient-based LR tuners: HD, RTHO and MARTHE (AdaTune's methods), served.

The client computes on the device only the scalars a method needs (see
``autolrs.callbacks.hypergrad``); the server owns the LR rule. Every hypergradient ``h`` is
dE/dLR (the derivative of the loss with respect to the base LR), and one hyper step is

    LR   <- clamp(LR - beta * clip(h), lr_min, lr_max)
    beta <- max(beta + alpha * h * h_prev, 0)          (gradient descent on beta, alpha > 0)

A non-finite ``h`` is skipped and counted, never applied. Reports are batched: the client
trains ``every`` steps at one LR and reports; the hyper steps of the report are applied in
order and the next segment runs at the resulting LR (so the update lags up to ``every`` steps;
``every: 1`` is the per-step algorithm at one round trip per step).

* ``hd`` (hypergradient descent, Baydin et al.): ``h`` of each step is the training
  hypergradient ``-g_t . d_{t-1}`` (``d`` the optimizer's previous update direction per unit
  LR); every step of a report is one hyper step.
* ``rtho`` / ``marthe``: the client runs the tangent recursion ``Z = dw/dLR`` discounted by
  ``mu`` and, at the end of each segment, reports ``h = grad E_val(w) . Z`` (one hyper step per
  segment). ``mu = 1`` is RTHO (Franceschi et al.), ``mu = 0`` is HD on the validation loss,
  ``mu < 0`` MARTHE's adaptive rule (Donini et al.).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Mapping

from autolrs import actions
from autolrs.actions import Observation
from autolrs.tuners.base import MAX_CHUNK, ConfigError, Tuner, require_int, require_nonnegative, require_positive


class HypergradientTuner(Tuner):
    """Shared LR rule; subclasses say what the client computes (``_spec``)."""

    defaults: ClassVar[dict[str, Any]] = {
        "lr": None,  # initial LR (default: the optimizer's)
        "lr_min": 0.0,
        "lr_max": None,  # default: 100 x the initial LR
        "beta": 1e-3,  # hyper-LR
        "alpha": 0.0,  # hyper-LR adaptation rate (0: beta fixed)
        "clip": None,  # |h| is clipped to this before a hyper step (None: no clipping)
        "every": 10,  # steps per report
    }
    limits: ClassVar[dict[str, int]] = {"every": MAX_CHUNK}  # a report holds a hypergradient per step

    def __init__(self, config: Mapping[str, Any] | None = None, seed: int = 0):
        super().__init__(config, seed)
        c = self.config
        lr0 = self.base_lr()
        self.lr_min = require_nonnegative(c["lr_min"], "lr_min")
        self.lr_max = 100.0 * lr0 if c["lr_max"] is None else require_positive(c["lr_max"], "lr_max")
        if not self.lr_min <= lr0 <= self.lr_max:
            raise ConfigError(f"{self.name}: the initial LR {lr0:g} is outside [lr_min, lr_max] = "
                              f"[{self.lr_min:g}, {self.lr_max:g}]")
        self.beta0 = require_nonnegative(c["beta"], "beta")
        self.alpha = require_nonnegative(c["alpha"], "alpha")
        self.clip = None if c["clip"] is None else require_positive(c["clip"], "clip")
        self.every = require_int(c, "every", minimum=1)
        self._validate()
        self.step = 0
        self.lr = lr0
        self.beta = self.beta0
        self.h_prev: float | None = None
        self.applied = 0  # hyper steps applied
        self.skipped = 0  # non-finite hypergradients (or LR updates) dropped
        self.clipped = 0
        self.missing = 0  # segments that came back without the hypergradient asked for

    def _validate(self) -> None:
        """Check the subclass's own knobs (raise ConfigError)."""

    def _spec(self) -> dict:
        """The ``hypergrad`` dict of the next run."""
        raise NotImplementedError

    # --- ask / tell ------------------------------------------------------------------------

    def ask(self) -> list[dict]:
        max_steps = self.config["max_steps"]
        if max_steps is not None and self.step >= max_steps:
            return [actions.stop("max_steps")]
        n = self.every if max_steps is None else min(self.every, max_steps - self.step)
        return [actions.set_lr(self.lr),
                actions.run(n, self.step, collect=("loss", "hypergrad"), hypergrad=self._spec())]

    def tell(self, observation: Observation) -> None:
        self.step = max(self.step, observation.step)
        report = observation.hypergrad
        hs = [] if report is None else report.get("h", [])
        if not hs:
            self.missing += 1
            return
        for h in hs:
            self._hyper_step(h, report)

    def _hyper_step(self, h: float, report: dict) -> None:
        if not math.isfinite(h):
            self.skipped += 1
            return
        if self.clip is not None and abs(h) > self.clip:
            h = math.copysign(self.clip, h)
            self.clipped += 1
        new = self.lr - self.beta * h
        if math.isnan(new):  # only reachable through inf * 0; +-inf is clamped below
            self.skipped += 1
            return
        self.lr = min(max(new, self.lr_min), self.lr_max)
        if self.alpha and self.h_prev is not None:
            # dE_t/dbeta = h_t * dLR_t/dbeta = -h_t * h_{t-1}.
            beta = self.beta + self.alpha * h * self.h_prev
            if math.isfinite(beta):
                self.beta = max(beta, 0.0)
        self.h_prev = h
        self.applied += 1
        self._after_step(report)

    def _after_step(self, report: dict) -> None:
        """Hook after an applied hyper step (MARTHE's adaptive mu)."""

    # --- state ---------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"step": self.step, "lr": self.lr, "beta": self.beta, "h_prev": self.h_prev,
                "applied": self.applied, "skipped": self.skipped, "clipped": self.clipped,
                "missing": self.missing}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step = int(state["step"])
        self.lr, self.beta = float(state["lr"]), float(state["beta"])
        self.h_prev = None if state["h_prev"] is None else float(state["h_prev"])
        self.applied, self.skipped = int(state["applied"]), int(state["skipped"])
        self.clipped, self.missing = int(state["clipped"]), int(state["missing"])

    def lr_bounds(self) -> tuple[float, float]:
        return (self.lr_min, self.lr_max)

    def summary(self) -> dict:
        return {"step": self.step, "lr": self.lr, "beta": self.beta, "last_h": self.h_prev,
                "applied": self.applied, "skipped": self.skipped, "clipped": self.clipped,
                "missing": self.missing}


class HDTuner(HypergradientTuner):
    """Hypergradient descent on the training loss: one hyper step per training step."""

    name = "hd"

    def _spec(self) -> dict:
        return {"method": "hd"}


class MartheTuner(HypergradientTuner):
    """The tangent recursion discounted by ``mu``; ``mu < 0``: MARTHE's adaptive mu.

    Adaptive rule (fixed from AdaTune, whose first exponent is 1/0): mu starts at 0 with
    ``c = 0``; after each hyper step ``z = clip(LR / (grad E_val . g_last), 0, 1)`` (0 when that
    dot product is not positive or not finite), ``c <- c + mu`` while mu > 0 else 0, and
    ``mu <- z ** (1 / (1 + c))``.
    """

    name = "marthe"
    defaults = {**HypergradientTuner.defaults, "beta": 1e-5, "mu": -1.0}

    def _validate(self) -> None:
        mu = self.config["mu"]
        if not isinstance(mu, (int, float)) or isinstance(mu, bool) or not math.isfinite(mu) or mu > 1:
            raise ConfigError(f"{self.name}: option 'mu' must be a number <= 1 (negative: adaptive), got {mu!r}")
        self.adaptive = mu < 0
        self.mu = 0.0 if self.adaptive else float(mu)
        self.c = 0.0

    def _spec(self) -> dict:
        return {"method": "tangent", "mu": self.mu, "vb": self.adaptive}

    def _after_step(self, report: dict) -> None:
        if not self.adaptive:
            return
        dot = report.get("vb")
        z = 0.0
        if dot is not None and math.isfinite(dot) and dot > 0:
            z = min(max(self.lr / dot, 0.0), 1.0)
        self.c = self.c + self.mu if self.mu > 0 else 0.0
        self.mu = z ** (1.0 / (1.0 + self.c))

    def state_dict(self) -> dict:
        return {**super().state_dict(), "mu": self.mu, "c": self.c}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.mu, self.c = float(state["mu"]), float(state["c"])

    def summary(self) -> dict:
        return {**super().summary(), "mu": self.mu}


class RTHOTuner(MartheTuner):
    """Real-time hyperparameter optimisation: the undiscounted tangent (MARTHE with mu = 1)."""

    name = "rtho"
    defaults = {k: v for k, v in MartheTuner.defaults.items() if k != "mu"}

    def _validate(self) -> None:
        self.adaptive, self.mu, self.c = False, 1.0, 0.0
