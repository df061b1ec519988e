"""Gradient-based LR tuners: HD, RTHO and MARTHE (AdaTune's methods), served.

The client computes on the device only the scalars a method needs (see
``autolrs.callbacks.hypergrad``); the server owns the LR rule. Every hypergradient ``h`` is
dE/dLR (the derivative of the loss with respect to the base LR), and one hyper step is

    LR   <- clamp(LR - beta * n * clip(h), lr_min, lr_max)
    beta <- max(beta + alpha * h * h_prev, 0)          (gradient descent on beta, alpha > 0)

with ``n`` the training steps ``h`` stands for, so ``beta`` is per training step (AdaTune's
hyper-LR) whatever ``every`` is; its default depends on the optimizer the client reports (Adam's
hypergradient has another scale than SGD's). A non-finite ``h`` is skipped and counted, never
applied. Reports are batched: the client trains ``every`` steps at one LR and reports; the hyper
steps of the report are applied in order and the next segment runs at the resulting LR (so the
update lags up to ``every`` steps; ``every: 1`` is the per-step algorithm at one round trip per
step). Because a report's hyper steps land at once, with no chance to correct a spike on the next
step as the per-step rule does, the LR at most doubles or halves per ``doubling_steps`` steps,
and a segment whose loss blew up lowers ``lr_max`` (:meth:`_ceiling_from_losses`).

* ``hd`` (hypergradient descent, Baydin et al.): ``h`` of each step is the training
  hypergradient ``-g_t . d_{t-1}`` (``d`` the optimizer's previous update direction per unit
  LR); every step of a report is one hyper step.
* ``rtho`` / ``marthe``: the client runs the tangent recursion ``Z = dw/dLR`` discounted by
  ``mu`` and, at the end of each segment, reports ``h = grad E_val(w) . Z`` (one hyper step per
  segment, standing for each of its ``n`` steps). ``mu = 1`` is RTHO (Franceschi et al.), ``mu = 0`` is HD on the validation loss,
  ``mu < 0`` MARTHE's adaptive rule (Donini et al.).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Mapping

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


#: ``lr_max`` when not set: this many times the initial LR.
LR_MAX_FACTOR = 100.0


class HypergradientTuner(Tuner):
    """Shared LR rule; subclasses say what the client computes (``_spec``)."""

    knobs: ClassVar[dict[str, tuple[Any, str]]] = {
        "lr": (None, "initial LR; null: the optimizer's"),
        "lr_min": (0.0, "the LR never goes below this"),
        "lr_max": (None, "the LR never goes above this; null: 100 x the initial LR"),
        "beta": (
            None,
            "hyper-LR per training step; null: by the optimizer the client reports (SGD 1e-3, Adam/AdamW 1e-5)",
        ),
        "alpha": (0.0, "hyper-LR adaptation rate (0: beta fixed)"),
        "clip": (None, "|h| is clipped to this before a hyper step; null: no clipping"),
        "every": (10, "steps per report"),
        "doubling_steps": (10, "the LR at most doubles or halves in this many steps; null: no limit"),
    }
    #: A report holds a hypergradient per step of ``every``.
    limits: ClassVar[dict[str, int]] = {"every": MAX_CHUNK, "doubling_steps": MAX_STEPS}

    #: The hyper-LR per training step when ``beta`` is not set, by the optimizer the client
    #: reports (before its first report, and for a client that does not say: SGD's).
    default_beta: ClassVar[dict[str, float]] = {"sgd": 1e-3, "adam": 1e-5}

    def __init__(self, config: Mapping[str, Any] | None = None, seed: int = 0):
        super().__init__(config, seed)
        c = self.config
        lr0 = self.base_lr()
        self.lr_min = require_nonnegative(c["lr_min"], "lr_min")
        self.lr0 = lr0
        self.lr_max = LR_MAX_FACTOR * lr0 if c["lr_max"] is None else require_positive(c["lr_max"], "lr_max")
        if not self.lr_min <= lr0 <= self.lr_max:
            raise ConfigError(
                f"{self.name}: the initial LR {lr0:g} is outside [lr_min, lr_max] = [{self.lr_min:g}, {self.lr_max:g}]"
            )
        self.optimizer: str | None = None  # "sgd" or "adam", from the client's first report
        self.beta0 = self.default_beta["sgd"] if c["beta"] is None else require_nonnegative(c["beta"], "beta")
        self.alpha = require_nonnegative(c["alpha"], "alpha")
        self.clip = None if c["clip"] is None else require_positive(c["clip"], "clip")
        self.every = require_int(c, "every", minimum=1)
        self.doubling_steps = (
            None if c["doubling_steps"] is None else require_positive(c["doubling_steps"], "doubling_steps")
        )
        self._validate()
        self.step = 0
        self.lr = lr0
        self.beta = self.beta0
        self.h_prev: float | None = None
        self.applied = 0  # hyper steps applied
        self.skipped = 0  # non-finite hypergradients (or LR updates) dropped
        self.clipped = 0
        self.missing = 0  # segments that came back without the hypergradient asked for
        self.skip_next = False  # drop the next hypergradient (it spans a rollback of the guard)
        self.limited = 0  # reports whose LR change the doubling limit cut
        self.first_loss: float | None = None  # the first segment's mean training loss
        self.ceilings = 0  # times a loss above the first segment's lowered lr_max

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
        return [
            actions.set_lr(self.lr),
            actions.run(n, self.step, collect=("loss", "hypergrad"), hypergrad=self._spec()),
        ]

    def tell(self, observation: Observation) -> None:
        self.step = max(self.step, observation.step)
        self._ceiling_from_losses(observation.losses)
        report = observation.hypergrad
        if report is not None and report.get("optimizer") and self.optimizer is None:
            self.optimizer = report["optimizer"]
            if self.config["beta"] is None:
                self.beta = self.beta0 = self.default_beta[self.optimizer]
        hs = [] if report is None else report.get("h", [])
        if not hs:
            self.missing += 1
            return
        weight = self._steps_per_h(observation, len(hs))
        before = self.lr
        if self.skip_next:
            # Its previous direction (hd) or tangent (rtho, marthe) belongs to the training the
            # guard undid: no information about the LR from the restored weights.
            self.skip_next = False
            self.skipped += 1
            hs = hs[1:]
        for h in hs:
            self._hyper_step(h, report, weight)
        if self.doubling_steps is not None:
            factor = 2.0 ** (max(1, observation.steps) / self.doubling_steps)
            # From below a tenth of the initial LR it may first climb back to that much.
            ceiling = max(before, 0.1 * self.lr0) * factor
            floor = max(self.lr_min, before / factor)
            if self.lr > ceiling or self.lr < floor:
                self.lr = min(max(self.lr, floor), ceiling)
                self.limited += 1

    def _ceiling_from_losses(self, losses: list[float]) -> None:
        """The job's own evidence of too large an LR: a segment whose mean training loss is not
        finite or more than twice the first segment's (``first + |first|``: training blew up,
        far beyond the noise of a segment's mean) ran above what the job tolerates, so
        ``lr_max`` drops to half the LR it ran at (never below ``lr_min``), and the LR with it."""
        if not losses:
            return
        mean = sum(losses) / len(losses) if all(math.isfinite(x) for x in losses) else math.inf
        if self.first_loss is None:
            if math.isfinite(mean):
                self.first_loss = mean
            return
        if mean > self.first_loss + abs(self.first_loss):
            self.lr_max = max(self.lr_min, min(self.lr_max, 0.5 * self.lr))
            self.lr = min(self.lr, self.lr_max)
            self.ceilings += 1

    def _steps_per_h(self, observation: Observation, n: int) -> int:
        """Training steps each reported hypergradient stands for (``hd``: one)."""
        return 1

    def _hyper_step(self, h: float, report: dict, weight: int = 1) -> None:
        if not math.isfinite(h):
            self.skipped += 1
            return
        if self.clip is not None and abs(h) > self.clip:
            h = math.copysign(self.clip, h)
            self.clipped += 1
        new = self.lr - self.beta * weight * h
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
        self._after_step(report, weight)

    def _after_step(self, report: dict, weight: int) -> None:
        """Hook after an applied hyper step standing for ``weight`` training steps (MARTHE's
        adaptive mu)."""

    def on_rollback(self, factor: float, info: Mapping[str, Any]) -> None:
        """Never again the LR that diverged: ``lr_max`` and the LR go to ``factor`` times it."""
        before = info.get("lr_before")
        before = self.lr if before is None else min(float(before), self.lr_max)
        self.lr_max = max(before * factor, 0.0)
        self.lr_min = min(self.lr_min, self.lr_max)
        self.lr = min(self.lr * factor, self.lr_max)
        self.h_prev = None
        self.skip_next = True

    # --- state ---------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "lr": self.lr,
            "beta": self.beta,
            "beta0": self.beta0,
            "h_prev": self.h_prev,
            "applied": self.applied,
            "skipped": self.skipped,
            "clipped": self.clipped,
            "missing": self.missing,
            "limited": self.limited,
            "optimizer": self.optimizer,
            "lr_min": self.lr_min,
            "lr_max": self.lr_max,
            "first_loss": self.first_loss,
            "ceilings": self.ceilings,
            "skip_next": self.skip_next,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step = int(state["step"])
        self.lr, self.beta = float(state["lr"]), float(state["beta"])
        self.beta0 = float(state.get("beta0", self.beta0))
        self.optimizer = state.get("optimizer")
        self.limited = int(state.get("limited", 0))
        self.first_loss = None if state.get("first_loss") is None else float(state["first_loss"])
        self.ceilings = int(state.get("ceilings", 0))
        self.h_prev = None if state["h_prev"] is None else float(state["h_prev"])
        self.applied, self.skipped = int(state["applied"]), int(state["skipped"])
        self.clipped, self.missing = int(state["clipped"]), int(state["missing"])
        self.lr_min = float(state.get("lr_min", self.lr_min))
        self.lr_max = float(state.get("lr_max", self.lr_max))
        self.skip_next = bool(state.get("skip_next", False))

    def lr_bounds(self) -> tuple[float, float]:
        return (self.lr_min, self.lr_max)

    def summary(self) -> dict:
        return {
            "step": self.step,
            "lr": self.lr,
            "beta": self.beta,
            "optimizer": self.optimizer,
            "last_h": self.h_prev,
            "applied": self.applied,
            "skipped": self.skipped,
            "clipped": self.clipped,
            "missing": self.missing,
            "limited": self.limited,
            "lr_max": self.lr_max,
            "ceilings": self.ceilings,
        }


class HDTuner(HypergradientTuner):
    """Hypergradient descent on the training loss: one hyper step per training step."""

    name = "hd"

    def _spec(self) -> dict:
        return {"method": "hd"}


class MartheTuner(HypergradientTuner):
    """The tangent recursion discounted by ``mu``; ``mu < 0``: MARTHE's adaptive mu.

    Adaptive rule (fixed from AdaTune, whose first exponent is 1/0): mu starts at 0 with
    ``c = 0``; after each hyper step ``z = clip(LR / (grad E_val . g_last), 0, 1)`` (0 when that
    dot product is not positive or not finite), ``c <- c + n * mu`` while mu > 0 else 0 (``n``
    the segment's steps: AdaTune adds mu at every step), and ``mu <- z ** (1 / (1 + c))``.
    """

    name = "marthe"
    knobs = {
        **HypergradientTuner.knobs,
        "mu": (-1.0, "discount of the tangent, <= 1; negative: adaptive (MARTHE's rule)"),
    }

    def _validate(self) -> None:
        mu = self.config["mu"]
        if not isinstance(mu, (int, float)) or isinstance(mu, bool) or not math.isfinite(mu) or mu > 1:
            raise ConfigError(f"{self.name}: option 'mu' must be a number <= 1 (negative: adaptive), got {mu!r}")
        self.adaptive = mu < 0
        self.mu = 0.0 if self.adaptive else float(mu)
        self.c = 0.0

    def _spec(self) -> dict:
        return {"method": "tangent", "mu": self.mu, "vb": self.adaptive}

    def _steps_per_h(self, observation: Observation, n: int) -> int:
        # One hypergradient at the end of a segment stands for each of its steps.
        return max(1, observation.steps // n) if observation.steps else self.every

    def _after_step(self, report: dict, weight: int) -> None:
        if not self.adaptive:
            return
        dot = report.get("vb")
        z = 0.0
        if dot is not None and math.isfinite(dot) and dot > 0:
            z = min(max(self.lr / dot, 0.0), 1.0)
        # AdaTune adds mu to c at every step; a segment stands for ``weight`` of them.
        self.c = self.c + weight * self.mu if self.mu > 0 else 0.0
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
    knobs = {k: v for k, v in MartheTuner.knobs.items() if k != "mu"}

    def _validate(self) -> None:
        self.adaptive, self.mu, self.c = False, 1.0, 0.0
