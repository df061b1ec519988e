"""AutoLRS (Jin et al., ICLR 2021): a constant LR per training stage, chosen by Bayesian
optimisation on forecast losses, with the original's bugs fixed.

A *stage* searches, then exploits:

* ``k`` trials. Trial ``i`` trains ``tau'`` steps (``tau' = tau * trial_fraction``) from the
  stage checkpoint with candidate LR ``c_i``; its losses are forecast ``tau`` steps ahead
  (:mod:`autolrs.forecast`) and the forecast is told to a 1-D GP over log LR (:mod:`autolrs.gp`)
  which proposes ``c_{i+1}``. ``c_0`` is a seeded log-uniform draw.
* The winner is the candidate with the lowest *observed* forecast (not the GP's minimum);
  training restarts from the stage checkpoint with it for ``tau`` steps.
* Then ``tau`` and ``tau'`` double up to ``tau_max``. Once a stage with ``tau = tau_max`` has run,
  trials are judged on validation loss instead (when the client has a ``val_fn``): each trial
  evaluates every ``tau' / val_points`` steps and the forecast horizon is ``tau`` in evaluation
  units. With the defaults (``tau = 1000``, ``tau_max = 8000``) stages 1-4 use training loss with
  ``tau' = 100, 200, 400, 800``, stage 5 on validation loss every 50 steps, exactly as the original.

In the action vocabulary (:mod:`autolrs.actions`) one stage is::

    [checkpoint("stage"), set_lr(c_0), run(tau')]           trial 0
    [restore("stage"),    set_lr(c_i), run(tau')]           trials 1 .. k-1
    [restore("stage"),    set_lr(best), run(tau)]           exploitation

The LR is applied in the same plan as the checkpoint/restore, so no step trains with a stale
LR (the original applied it one message late, and that stale step entered the forecast).
With ``keep_best_trial`` the trial whose forecast is the best so far has its end weights saved
in slot ``"best"`` (one extra copy; ``checkpoint("best")`` leads the next plan, before its
restore), and exploitation continues from there instead of from the stage start
(``[restore("best"), discard("best"), set_lr(best), run(tau)]``, or just ``set_lr`` when the
winner was the last trial), so the winner's ``tau'`` steps are not thrown away.

Other fixes: a trial whose window holds NaN/inf (or nothing) gets the numeric ``loss_penalty``
as its forecast and ranks after every finite forecast (the original stored the string "nan"
and crashed at ``min``); the BO never repeats an LR within a stage; the validation-mode guard
of the original (compare validation losses with the first *training* loss) is dropped because
its units do not match: a rising validation series already extrapolates upwards and ranks last.

Automatic bounds (``min_lr`` and/or ``max_lr`` set to ``"auto"``): before anything else the
tuner runs a short LR range test (an embedded :class:`~autolrs.tuners.range_test.RangeTestTuner`,
``auto_num_iter`` steps from ``auto_start_lr`` to ``auto_end_lr``, exponential), restores the
weights it started from, and derives the search interval from the raw curve with
:func:`autolrs.lr_curve.bounds_from_curve` (``max_lr`` a third of the LR at the lowest loss, ``min_lr`` where the
loss has fallen by 10 % of its total fall, at least a decade below ``max_lr``). A bound given
as a number is kept. The range test's restore leads the first plan after it. Its steps count
against ``max_steps`` (the compute was spent) and are reported as ``bounds_steps``. If the curve
supports no interval (the loss never fell) the defaults below are used and ``bounds_source``
says why; the job never fails for it.

Final decay (``final_decay`` ``cosine`` or ``linear``, with ``max_steps`` known): the run that
ends the job (the last stage's exploitation) anneals the winner's LR to 0 over its steps
instead of holding it, sent as per-step ``lrs`` in chunks of 1000. Beyond the original: a
constant LR until the last step leaves the loss on the plateau that annealing would go below.

Warm-up (``warmup_steps`` > 0): a linear ramp ``lr_i = warmup_lr / warmup_steps * (i + 1)``
sent as ``run`` segments with per-step ``lrs`` (chunks of 1000), before stage 1.

Budget (``max_steps`` known): see :meth:`AutoLRSTuner._stage_plan`. In short, stages run in
full while they fit; a stage that would leave less than one first-stage cost (``k * tau'_1 +
tau_1``) adds the remainder to its exploitation run; a stage that does not fit is shrunk to the
largest ``tau`` whose cost fits, its exploitation taking the rounding. The job therefore ends
exactly at ``max_steps``, at the end of an exploitation run, and the tuner then sends ``stop``.

State is plain JSON: counters, the current stage's trials (LR, forecast, status), the pending
candidate and per-stage records. The random draws are recomputed from ``(seed, stage)`` and
the GP's from ``(seed, stage, trial)``, so nothing opaque is stored and a reloaded tuner
continues identically.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from autolrs import actions, gp, lr_curve, trial_checks
from autolrs.actions import Observation
from autolrs.forecast import fit_forecast
from autolrs.space import LogSpace
from autolrs.tuners.base import MAX_STEPS, ConfigError, Tuner, require_int, require_positive
from autolrs.tuners.range_test import SLOT as RANGE_TEST_SLOT
from autolrs.tuners.range_test import RangeTestTuner

STATE_VERSION = 3  # 2 added the automatic bounds, 3 the forecasts' uncertainty and health; older states load
WARMUP_CHUNK = 1000
PHASES = ("bounds", "warmup", "trial", "exploit", "final", "done")
AUTO = "auto"
#: ``max_lr: auto`` is the range test's loss minimum divided by this: a constant LR at the
#: minimum itself is on the edge of divergence (it collapsed a small CNN; bench/quality.py).
AUTO_BELOW_MINIMUM = 3.0
DECAYS = ("none", "cosine", "linear")
TIE_BREAKS = ("best", "lowest")
PRESETS = ("default", "paper")


#: ``preset: paper``: the published method's choices for every knob the user does not set.
PAPER = {"keep_best_trial": False, "final_decay": "none", "loss_floor": None, "pessimism": 0.0,
         "tie_break": "best", "check_trials": False, "val_from": "tau_max"}


def decayed_lr(lr: float, i: int, n: int, kind: str) -> float:
    """The LR of step ``i`` of an ``n``-step run annealed from ``lr`` towards 0: cosine as
    ``torch.optim.lr_scheduler.CosineAnnealingLR`` with ``T_max = n``, or linear."""
    if kind == "cosine":
        return lr * (1 + math.cos(math.pi * i / n)) / 2
    return lr * (1 - i / n)


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def _finite(value: Any, key: str, minimum: float = -math.inf) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < minimum:
        bound = "" if minimum == -math.inf else f" >= {minimum:g}"
        raise ConfigError(f"option {key!r} must be a finite number{bound}, got {value!r}")
    return float(value)


class AutoLRSTuner(Tuner):
    """Per-stage LR search by Bayesian optimisation on exponential loss forecasts."""

    name = "autolrs"
    #: Documented as lr_min/lr_max like every tuner's bounds; the old spellings still work (deprecated).
    aliases: ClassVar[dict[str, str]] = {"min_lr": "lr_min", "max_lr": "lr_max"}
    defaults: ClassVar[dict[str, Any]] = {
        "min_lr": None,  # lower end of the search interval; None: initial_lr / 100, else 1e-3; "auto"
        "max_lr": None,  # upper end; None: initial_lr * 10, else 1.0; "auto": from a range test
        "auto_start_lr": 1e-6,  # the range test behind "auto" bounds sweeps from here ...
        "auto_end_lr": 10.0,  # ... to here ...
        "auto_num_iter": 100,  # ... in this many steps
        "tau": 1000,  # first stage's exploitation length (steps)
        "tau_max": 8000,  # cap on tau
        "k": 10,  # candidate LRs (BO evaluations) per stage
        "trial_fraction": 0.1,  # tau' = round(tau * trial_fraction), at least 1
        "acquisition": "lcb",  # "lcb" or "ei"
        "kappa": 1e6,  # LCB exploration weight (1e6: pure exploration, as the original)
        "warmup_steps": 0,  # linear warm-up steps before stage 1
        "warmup_lr": None,  # LR the warm-up ends at; None: initial_lr, else sqrt(min_lr * max_lr)
        "val_points": 16,  # validation evaluations per trial in validation mode
        "use_val": True,  # judge trials on validation loss (needs has_val_fn) from `val_from` on
        "val_from": "start",  # "start": from stage 1; "tau_max": once tau reaches tau_max (the paper)
        "keep_best_trial": True,  # exploit from the best trial's end weights (one extra copy)
        "loss_penalty": 1e6,  # forecast recorded for a diverged (NaN/inf) trial
        "final_decay": "cosine",  # "cosine", "linear" or "none": anneal the run that ends the job (with max_steps)
        "loss_floor": 0.0,  # forecasts never go below it; null for a loss that can be negative
        "pessimism": 1.0,  # trials are compared on forecast + pessimism * its standard deviation
        "tie_break": "lowest",  # among trials the forecasts cannot tell from the best: "lowest" LR, or "best"
        "check_trials": True,  # a trial with a rising tail, spikes or outsized noise cannot win
        "preset": "default",  # "paper": the published method (the knobs in PAPER), for comparison
    }
    limits: ClassVar[dict[str, int]] = {"auto_num_iter": 1000, "tau": MAX_STEPS, "tau_max": MAX_STEPS, "k": 100,
                                        "warmup_steps": MAX_STEPS, "val_points": 1000}

    def __init__(self, config: Mapping[str, Any] | None = None, seed: int = 0):
        config = dict(config or {})
        preset = config.get("preset", "default")
        if preset not in PRESETS:
            raise ConfigError(f"autolrs: preset must be one of {', '.join(PRESETS)}, got {preset!r}")
        if preset == "paper":
            config = {**PAPER, **config}
        super().__init__(config, seed)
        cfg = self.config
        initial = cfg["initial_lr"]
        if not (isinstance(initial, (int, float)) and not isinstance(initial, bool)
                and math.isfinite(initial) and initial > 0):
            initial = None  # unknown (or an optimizer LR of 0): nothing to derive from
        self.initial = initial
        self.auto = {key: cfg[key] == AUTO for key in ("min_lr", "max_lr")}
        for key, auto in self.auto.items():
            if not auto and cfg[key] is not None:
                require_positive(cfg[key], key)  # a typo fails now, not after the range test
        self.range_test: RangeTestTuner | None = None
        if any(self.auto.values()):
            self.range_test = RangeTestTuner(self._range_test_config(), seed)
        self.bounds_source = "auto (pending range test)" if self.range_test else "config"
        self._set_bounds(None if self.auto["min_lr"] else cfg["min_lr"],
                         None if self.auto["max_lr"] else cfg["max_lr"], check=self.range_test is None)
        self.tau0 = require_int(cfg, "tau", minimum=1)
        self.tau_max = require_int(cfg, "tau_max", minimum=1)
        if self.tau_max < self.tau0:
            raise ConfigError(f"autolrs: tau_max ({self.tau_max}) must be >= tau ({self.tau0})")
        self.k = require_int(cfg, "k", minimum=1)
        self.trial_fraction = require_positive(cfg["trial_fraction"], "trial_fraction")
        if self.trial_fraction > 1:
            raise ConfigError(f"autolrs: trial_fraction must be in (0, 1], got {self.trial_fraction}")
        acq = cfg["acquisition"]
        if not isinstance(acq, str) or acq.lower() not in gp.ACQUISITIONS:
            raise ConfigError(f"autolrs: acquisition must be one of {', '.join(gp.ACQUISITIONS)}, got {acq!r}")
        self.acquisition = acq.lower()
        kappa = cfg["kappa"]
        if not isinstance(kappa, (int, float)) or isinstance(kappa, bool) or not math.isfinite(kappa) or kappa < 0:
            raise ConfigError(f"option 'kappa' must be a finite number >= 0, got {kappa!r}")
        self.kappa = float(kappa)
        self.warmup_steps = require_int(cfg, "warmup_steps", minimum=0)
        if cfg["warmup_lr"] is not None:
            require_positive(cfg["warmup_lr"], "warmup_lr")
        self.val_points = require_int(cfg, "val_points", minimum=1)
        for key in ("use_val", "keep_best_trial", "check_trials"):
            if not isinstance(cfg[key], bool):
                raise ConfigError(f"option {key!r} must be true or false, got {cfg[key]!r}")
        self.use_val = cfg["use_val"] and bool(cfg["has_val_fn"])
        if cfg["val_from"] not in ("tau_max", "start"):
            raise ConfigError(f"autolrs: val_from must be 'tau_max' or 'start', got {cfg['val_from']!r}")
        self.val_from_start = cfg["val_from"] == "start"
        self.keep_best = cfg["keep_best_trial"]
        self.penalty = require_positive(cfg["loss_penalty"], "loss_penalty")
        if cfg["final_decay"] not in DECAYS:
            raise ConfigError(f"autolrs: final_decay must be one of {', '.join(DECAYS)}, got {cfg['final_decay']!r}")
        self.final_decay = cfg["final_decay"]
        self.loss_floor = None if cfg["loss_floor"] is None else _finite(cfg["loss_floor"], "loss_floor")
        self.pessimism = _finite(cfg["pessimism"], "pessimism", minimum=0.0)
        if cfg["tie_break"] not in TIE_BREAKS:
            raise ConfigError(f"autolrs: tie_break must be one of {', '.join(TIE_BREAKS)}, got {cfg['tie_break']!r}")
        self.tie_break = cfg["tie_break"]
        self.check_trials = cfg["check_trials"]
        self.max_steps = cfg["max_steps"]
        #: Said to the user once at the start (the server passes them on in the hello reply).
        self.notices: list[str] = []
        if self.max_steps is None:
            self.notices.append(
                "autolrs: no max_steps given, so the stages cannot be planned to the budget and the run is "
                "not annealed at the end; pass max_steps= (the number of optimizer steps) to the callback")
        # Exclusion radius around tried points (unit log-LR interval): a quarter of the spacing
        # k evenly spread points would have, at most 0.05.
        self.min_distance = min(0.05, 0.25 / self.k)
        self.min_stage_cost = self._cost(self.tau0)
        self._init_state()

    # ------------------------------------------------------------------ search interval

    def _range_test_config(self) -> dict:
        cfg = self.config
        start = require_positive(cfg["auto_start_lr"], "auto_start_lr")
        end = require_positive(cfg["auto_end_lr"], "auto_end_lr")
        if not start < end:
            raise ConfigError(f"autolrs: auto_start_lr ({start}) must be below auto_end_lr ({end})")
        return {"start_lr": start, "end_lr": end, "num_iter": require_int(cfg, "auto_num_iter", minimum=3),
                "initial_lr": self.initial, "max_steps": cfg["max_steps"]}

    def _set_bounds(self, min_lr: Any, max_lr: Any, check: bool = True) -> None:
        """Set the search interval; ``None`` takes the default (from ``initial_lr``). With
        ``check=False`` (automatic bounds still to come) nothing is validated yet."""
        initial = self.initial
        min_lr = min_lr if min_lr is not None else (initial / 100 if initial else 1e-3)
        max_lr = max_lr if max_lr is not None else (initial * 10 if initial else 1.0)
        if not check:
            self.min_lr = self.max_lr = math.nan
            return
        self.min_lr = require_positive(min_lr, "min_lr")
        self.max_lr = require_positive(max_lr, "max_lr")
        if not self.min_lr < self.max_lr:
            raise ConfigError(f"autolrs: min_lr ({self.min_lr}) must be below max_lr ({self.max_lr}); "
                              "unset bounds come from initial_lr (/100 and *10), so set both")
        self.space = LogSpace(self.min_lr, self.max_lr)

    def _bounds_from_range_test(self) -> None:
        """Derive the interval from the finished range test; fall back to the defaults (and
        say why in ``bounds_source``) when the curve supports none."""
        history = self.range_test.history
        given = {key: None if self.auto[key] else self.config[key] for key in ("min_lr", "max_lr")}
        try:
            lo, hi = lr_curve.bounds_from_curve(history["lr"], history["loss"], below_minimum=AUTO_BELOW_MINIMUM)
            lo = lo if self.auto["min_lr"] else given["min_lr"]
            hi = hi if self.auto["max_lr"] else given["max_lr"]
            if not lo < hi:
                raise ValueError(f"the derived bound does not fit the given one ({lo} >= {hi})")
            self._set_bounds(lo, hi)
            self.bounds_source = f"range test ({self.range_test.done}, {len(history['lr'])} points)"
        except ValueError as exc:
            self._set_bounds(given["min_lr"], given["max_lr"])
            self.bounds_source = f"defaults: {exc}"

    def _start_lr(self) -> float:
        if self.warmup_steps:
            return self.warmup_lr
        if self.initial:
            return self.space.clamp(self.initial)
        return math.sqrt(self.min_lr * self.max_lr)

    @property
    def warmup_lr(self) -> float:
        """The LR the warm-up ramp ends at (its default depends on the interval)."""
        wlr = self.config["warmup_lr"]
        if wlr is None:
            wlr = self.initial if self.initial else math.sqrt(self.min_lr * self.max_lr)
        return float(wlr)

    # ------------------------------------------------------------------ planning helpers

    def _trial_len(self, tau: int) -> int:
        return max(1, _round_half_up(tau * self.trial_fraction))

    def _cost(self, tau: int) -> int:
        return self.k * self._trial_len(tau) + tau

    def _stage_plan(self, tau: int, remaining: int | None) -> dict | None:
        """Trial and exploitation lengths of the next stage, given the steps left.

        Budget rule (``remaining`` = ``max_steps`` minus the client's step):

        1. The stage costs ``k * tau' + tau`` steps. If that fits and leaves at least the cost
           of a first stage (``k * tau'_1 + tau_1``), it runs as planned.
        2. If it fits but would leave less than that, the remainder is added to its
           exploitation run. So after a stage either nothing or at least a first stage's cost
           is left.
        3. If it does not fit, ``tau`` shrinks to the largest value whose cost fits and the
           exploitation run takes the rounding slack, so the stage ends exactly at the budget.
           By rule 2 the shrunk ``tau`` is never below ``tau_1``, except when the budget (after
           warm-up) is smaller than one first stage.
        4. If not even ``tau = 1`` fits (fewer than ``k + 1`` steps), the remaining steps are
           trained at the current LR without searching (returns None).

        Without ``max_steps`` stages always run as planned.
        """
        tp = self._trial_len(tau)
        if remaining is None:
            return {"tau": tau, "trial_steps": tp, "exploit_steps": tau}
        cost = self._cost(tau)
        if cost <= remaining:
            left = remaining - cost
            exploit = tau + left if left < self.min_stage_cost else tau
            return {"tau": tau, "trial_steps": tp, "exploit_steps": exploit}
        if self._cost(1) > remaining:
            return None
        lo, hi = 1, tau  # cost(lo) fits, cost(hi) does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self._cost(mid) <= remaining:
                lo = mid
            else:
                hi = mid
        tp = self._trial_len(lo)
        return {"tau": tau, "trial_steps": tp, "exploit_steps": remaining - self.k * tp}

    def _remaining(self) -> int | None:
        return None if self.max_steps is None else self.max_steps - self.step

    def _seed_seq(self, *keys: int) -> np.random.SeedSequence:
        return np.random.SeedSequence([self.seed % (2 ** 63), *keys])

    def _first_candidate(self, stage: int) -> float:
        rng = np.random.default_rng(self._seed_seq(stage, 0))
        return self.space.sample(rng)

    # ------------------------------------------------------------------ state machine

    def _init_state(self) -> None:
        self.step = 0
        self.phase = "warmup"
        self.warmup_done = 0
        self.stage = 0  # becomes 1 when the first stage starts
        self.tau = self.tau0
        self.val_mode = self.use_val and self.val_from_start
        self.current: dict | None = None  # the running stage's plan and trials
        self.stages: list[dict] = []  # finished searches, one record per stage
        self.search_steps = 0
        self.train_steps = 0
        self.warmup_trained = 0
        self.bounds_steps = 0
        self.restore_range_test = False  # the next plan starts with the range test's restore
        self.stop_reason = ""
        if self.range_test is not None:
            self.phase = "bounds"
            self.lr = float(self.initial or self.range_test.start_lr)
        else:
            self._begin()

    def _begin(self) -> None:
        """Start training proper: warm-up, then stage 1 (the interval is known by now)."""
        self.lr = self._start_lr()
        self.phase = "warmup"
        if self._warmup_total() == 0:
            self._start_stage()

    def _warmup_total(self) -> int:
        if self.max_steps is None:
            return self.warmup_steps
        return min(self.warmup_steps, self.max_steps)

    def _start_stage(self) -> None:
        remaining = self._remaining()
        if remaining is not None and remaining <= 0:
            self.phase, self.current, self.stop_reason = "done", None, "max_steps"
            return
        plan = self._stage_plan(self.tau, remaining)
        if plan is None:
            self.phase, self.current = "final", None
            return
        self.stage += 1
        tp = plan["trial_steps"]
        eval_every = max(1, tp // self.val_points) if self.val_mode else 0
        self.current = {
            **plan,
            "stage": self.stage,
            "mode": "val" if self.val_mode else "train",
            "eval_every": eval_every,
            "start_step": self.step,
            "trials": [],  # {"lr", "u", "forecast", "std", "status", "failed", "sigma", "rising", "spikes"}
            "next_lr": self._first_candidate(self.stage),
            "best_slot": None,  # trial index whose end weights are (or will be) in "best"
            "save_best": False,  # the next plan starts with checkpoint("best")
            "best_saved": False,  # slot "best" holds something this stage
            "winner": None,  # trial index once the search is over
        }
        self.phase = "trial"

    def _forecast(self, obs: Observation) -> dict:
        """A trial's record from its report: forecast, its uncertainty, status, window health."""
        cur = self.current
        losses = list(obs.losses)
        evals = [(p, v) for p, v in obs.evals if p > 0]
        if cur["mode"] == "val" and evals:
            if any(not math.isfinite(v) for v in losses):
                return {"forecast": self.penalty, "std": 0.0, "status": "nonfinite", "failed": True}
            by_pos: dict[int, float] = {}
            for p, v in evals:
                by_pos[int(p)] = float(v)
            pos = sorted(by_pos)
            e = cur["eval_every"]
            window = [by_pos[p] for p in pos]
            fit = fit_forecast(window, cur["exploit_steps"] / e, "val", x=[p / e for p in pos],
                               penalty=self.penalty, floor=self.loss_floor)
        else:
            window = losses
            fit = fit_forecast(window, cur["exploit_steps"], "train", penalty=self.penalty, floor=self.loss_floor)
        record = {"forecast": float(fit.value), "std": float(fit.std) if math.isfinite(fit.std) else 0.0,
                  "status": fit.status, "failed": fit.failed}
        if not fit.failed:
            health = trial_checks.window_health(window)
            record.update(sigma=health.sigma if math.isfinite(health.sigma) else None,
                          rising=health.rising_tail, spikes=health.spikes)
        return record

    def _score(self, trial: dict) -> float:
        """What trials are compared on: the forecast plus ``pessimism`` standard deviations."""
        return trial["forecast"] + self.pessimism * trial.get("std", 0.0)

    def _reasons(self, trials: list[dict]) -> list[list[str]]:
        """Why each trial may not win (empty: it may); every finite trial may without checks."""
        if not self.check_trials:
            return [["failed"] if t["failed"] else [] for t in trials]
        healths = [None if t["failed"] else trial_checks.WindowHealth(
            bool(t.get("rising", False)), int(t.get("spikes", 0)),
            math.nan if t.get("sigma") is None else float(t["sigma"])) for t in trials]
        return trial_checks.unstable_reasons(healths)

    def _suggest(self) -> float:
        cur = self.current
        trials = cur["trials"]
        us = [t["u"] for t in trials]
        ys = [math.inf if t["failed"] else self._score(t) for t in trials]
        seed = int(self._seed_seq(self.stage, len(trials)).generate_state(1)[0])
        # Each fit starts from the stage's previous one: one more point moves the optimum little.
        u, theta = gp.suggest_warm(us, ys, cur.get("gp_theta"), acquisition=self.acquisition, kappa=self.kappa,
                                   seed=seed, min_distance=self.min_distance)
        if theta is not None:
            cur["gp_theta"] = theta
        lr = self.space.from_unit(u)
        tried = {t["lr"] for t in trials}
        if lr in tried:  # only if the interval is exhausted at this resolution
            lr = self.space.from_unit(gp.largest_gap(us))
        return lr

    def _pick_winner(self) -> int:
        """The stage's LR: among trials that may win (finite, and healthy with ``check_trials``)
        the lowest score; with ``tie_break: lowest`` the lowest LR among those whose optimistic
        forecast (forecast - pessimism * std) reaches that score, i.e. that the forecasts cannot
        tell from it. With no healthy trial, the lowest finite LR; with no finite one, the lowest LR."""
        trials = self.current["trials"]
        reasons = self._reasons(trials)
        finite = [i for i, t in enumerate(trials) if not t["failed"]]
        if not finite:
            return min(range(len(trials)), key=lambda i: (trials[i]["lr"], i))
        pool = [i for i in finite if not reasons[i]]
        if not pool:
            return min(finite, key=lambda i: (trials[i]["lr"], i))
        best = min(pool, key=lambda i: (self._score(trials[i]), i))
        if self.tie_break == "best":
            return best
        bar = self._score(trials[best])
        tied = [i for i in pool if trials[i]["forecast"] - self.pessimism * trials[i].get("std", 0.0) <= bar]
        return min(tied, key=lambda i: (trials[i]["lr"], i))

    def _end_search(self) -> None:
        cur = self.current
        w = self._pick_winner()
        cur["winner"] = w
        trials = cur["trials"]
        self.stages.append({
            "stage": cur["stage"], "start_step": cur["start_step"], "mode": cur["mode"],
            "tau": cur["tau"], "trial_steps": cur["trial_steps"], "exploit_steps": cur["exploit_steps"],
            "eval_every": cur["eval_every"],
            "trials": [{"lr": t["lr"], "forecast": t["forecast"], "std": t.get("std", 0.0), "status": t["status"],
                        "unstable": r} for t, r in zip(trials, self._reasons(trials))],
            "winner": trials[w]["lr"], "winner_forecast": trials[w]["forecast"],
            "all_failed": all(t["failed"] for t in trials),
        })
        remaining = self._remaining()
        # Only the run that ends the job is annealed: earlier stages' LRs stay the search's.
        cur["decay"] = (self.final_decay != "none" and remaining is not None
                        and cur["exploit_steps"] >= remaining)
        cur["exploit_done"] = 0
        self.phase = "exploit"

    def _end_stage(self) -> None:
        if self.tau < self.tau_max:
            self.tau = min(2 * self.tau, self.tau_max)
        elif self.use_val:
            self.val_mode = True
        self._start_stage()

    # ------------------------------------------------------------------ Tuner API

    def _warmup_chunk(self) -> int:
        n = min(WARMUP_CHUNK, self._warmup_total() - self.warmup_done)
        remaining = self._remaining()
        return n if remaining is None else min(n, remaining)

    def _run(self, steps: int, **kwargs: Any) -> dict:
        """A ``run`` action, truncated at the budget (only matters if the client's step count
        jumped ahead of the plan)."""
        remaining = self._remaining()
        if remaining is not None:
            steps = min(steps, remaining)
        return actions.run(steps, self.step, **kwargs)

    def ask(self) -> list[dict]:
        if self.phase == "bounds":
            return self.range_test.ask()
        plan = self._plan()
        if self.restore_range_test:  # put back the weights the range test started from
            plan = [actions.restore(RANGE_TEST_SLOT), actions.discard(RANGE_TEST_SLOT)] + plan
        return plan

    def _plan(self) -> list[dict]:
        remaining = self._remaining()
        if self.phase == "done" or (remaining is not None and remaining <= 0):
            return [actions.stop(self.stop_reason or "max_steps")]
        if self.phase == "warmup":
            n = self._warmup_chunk()
            w, lr = self.warmup_steps, self.warmup_lr
            lrs = [lr / w * (i + 1) for i in range(self.warmup_done, self.warmup_done + n)]
            return [actions.run(n, self.step, lrs=lrs, collect=())]
        if self.phase == "final":
            return [actions.set_lr(self.lr), actions.run(remaining, self.step, collect=())]
        cur = self.current
        if self.phase == "trial":
            plan: list[dict] = []
            if not cur["trials"]:
                plan.append(actions.checkpoint("stage"))
            else:
                if cur["save_best"]:
                    plan.append(actions.checkpoint("best"))
                plan.append(actions.restore("stage"))
            plan.append(actions.set_lr(cur["next_lr"]))
            plan.append(self._run(cur["trial_steps"], eval_every=cur["eval_every"]))
            return plan
        # exploit
        w = cur["winner"]
        lr = cur["trials"][w]["lr"]
        if cur.get("decay"):
            done = cur["exploit_done"]
            n = self._exploit_chunk()
            lrs = [decayed_lr(lr, i, cur["exploit_steps"], self.final_decay) for i in range(done, done + n)]
            run = actions.run(n, self.step, lrs=lrs, collect=())
            return [run] if done else self._exploit_prefix(w) + [run]
        return self._exploit_prefix(w) + [actions.set_lr(lr), self._run(cur["exploit_steps"], collect=())]

    def _exploit_chunk(self) -> int:
        """Steps of the next message of an annealed run (its LRs travel in chunks)."""
        cur = self.current
        n = min(WARMUP_CHUNK, cur["exploit_steps"] - cur["exploit_done"])
        remaining = self._remaining()
        return n if remaining is None else max(1, min(n, remaining))

    def _exploit_prefix(self, w: int) -> list[dict]:
        """The weights the winner's run starts from: the stage checkpoint, or the best trial's."""
        cur = self.current
        plan = []
        if self.keep_best and cur["best_slot"] == w:
            if w != len(cur["trials"]) - 1:
                plan += [actions.restore("best"), actions.discard("best")]
            elif cur["best_saved"]:
                plan.append(actions.discard("best"))  # an older best; the winner is in place
        else:
            plan.append(actions.restore("stage"))
            if cur["best_saved"]:
                plan.append(actions.discard("best"))
        return plan

    def tell(self, observation: Observation) -> None:
        if self.phase == "done":
            return
        if self.phase == "bounds":
            self.range_test.tell(observation)
            self.step = max(0, int(observation.step))
            if self.range_test.done is not None:
                self.bounds_steps = self.range_test.pos
                self._bounds_from_range_test()
                self.restore_range_test = True
                self._begin()
            return
        self.restore_range_test = False  # the plan that carried it has been carried out
        # What the plan asked for, when the phase advances in chunks.
        n = self._warmup_chunk() if self.phase == "warmup" else 0
        if self.phase == "exploit" and self.current.get("decay"):
            n = self._exploit_chunk()
        self.step = max(0, int(observation.step))
        if self.phase == "warmup":
            self.warmup_done += n
            self.warmup_trained += n
            self.lr = self.warmup_lr / self.warmup_steps * self.warmup_done
            remaining = self._remaining()
            if self.warmup_done >= self._warmup_total() or (remaining is not None and remaining <= 0):
                self._start_stage()
            return
        if self.phase == "final":
            self.train_steps += max(0, observation.steps) or 0
            self.phase, self.stop_reason = "done", "max_steps"
            return
        cur = self.current
        if self.phase == "trial":
            lr = cur["next_lr"]
            record = self._forecast(observation)
            failed = record["failed"]
            i = len(cur["trials"])
            cur["trials"].append({"lr": lr, "u": self.space.to_unit(lr), **record})
            self.search_steps += cur["trial_steps"]
            self.lr = lr
            if cur["save_best"]:  # the plan just carried out saved the previous best
                cur["save_best"], cur["best_saved"] = False, True
            if self.keep_best and not failed and not (self.check_trials and (record["rising"] or record["spikes"]
                                                                             >= trial_checks.MIN_SPIKES)):
                b = cur["best_slot"]
                if b is None or self._score(cur["trials"][i]) < self._score(cur["trials"][b]):
                    cur["best_slot"] = i
                    cur["save_best"] = i < self.k - 1
            if len(cur["trials"]) < self.k:
                cur["next_lr"] = self._suggest()
            else:
                cur["next_lr"] = None
                self._end_search()
            return
        # exploit
        lr = cur["trials"][cur["winner"]]["lr"]
        if cur.get("decay"):
            cur["exploit_done"] += n
            self.train_steps += n
            self.lr = decayed_lr(lr, cur["exploit_done"] - 1, cur["exploit_steps"], self.final_decay)
            if cur["exploit_done"] < cur["exploit_steps"] and self._remaining() > 0:
                return
            self._end_stage()
            return
        self.train_steps += cur["exploit_steps"]
        self.lr = lr
        self._end_stage()

    def state_dict(self) -> dict:
        return {
            "version": STATE_VERSION,
            "step": self.step, "lr": self.lr, "phase": self.phase, "warmup_done": self.warmup_done,
            "stage": self.stage, "tau": self.tau, "val_mode": self.val_mode,
            "current": copy.deepcopy(self.current), "stages": copy.deepcopy(self.stages),
            "search_steps": self.search_steps, "train_steps": self.train_steps,
            "warmup_trained": self.warmup_trained, "stop_reason": self.stop_reason,
            "bounds": self._bounds_state(), "bounds_steps": self.bounds_steps,
            "restore_range_test": self.restore_range_test,
            "range_test": self.range_test.state_dict() if self.phase == "bounds" else None,
        }

    def _bounds_state(self) -> dict:
        known = math.isfinite(self.min_lr)
        return {"min_lr": self.min_lr if known else None, "max_lr": self.max_lr if known else None,
                "source": self.bounds_source}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("version") not in (1, 2, STATE_VERSION):
            raise ValueError(f"autolrs: unsupported state version {state.get('version')!r}")
        if state["phase"] not in PHASES:
            raise ValueError(f"autolrs: unknown phase {state['phase']!r}")
        self.step = int(state["step"])
        self.lr = float(state["lr"])
        self.phase = state["phase"]
        self.warmup_done = int(state["warmup_done"])
        self.stage = int(state["stage"])
        self.tau = int(state["tau"])
        self.val_mode = bool(state["val_mode"])
        self.current = copy.deepcopy(dict(state["current"])) if state["current"] is not None else None
        self.stages = copy.deepcopy(list(state["stages"]))
        self.search_steps = int(state["search_steps"])
        self.train_steps = int(state["train_steps"])
        self.warmup_trained = int(state["warmup_trained"])
        self.stop_reason = str(state["stop_reason"])
        self.bounds_steps = int(state.get("bounds_steps", 0))
        self.restore_range_test = bool(state.get("restore_range_test", False))
        bounds = state.get("bounds")
        if bounds is not None:
            self.bounds_source = str(bounds["source"])
            if bounds["min_lr"] is not None:
                self._set_bounds(bounds["min_lr"], bounds["max_lr"])
        if state.get("range_test") is not None:
            self.range_test.load_state_dict(state["range_test"])

    def in_search(self) -> bool:
        return self.phase in ("bounds", "trial")

    def resume(self, step: int) -> None:
        """A trainer restarted from its checkpoint at ``step`` holds none of the stage's slots: a
        range test or a stage in progress starts again from there (its trials were measured
        from weights the trainer no longer has); warm-up and the final run go on at ``step``."""
        self.step = max(0, int(step))
        self.restore_range_test = False
        if self.phase == "bounds":
            self.range_test = RangeTestTuner(self._range_test_config(), self.seed)
            self.range_test.step = self.step
        elif self.phase in ("trial", "exploit"):
            self.stage -= 1  # the same stage, from the beginning
            self._start_stage()
        elif self.phase == "warmup":
            self.warmup_done = min(self._warmup_total(), max(0, self.step - self.bounds_steps))
            if self.warmup_done >= self._warmup_total():
                self._start_stage()

    def lr_bounds(self) -> tuple[float, float]:
        """``(min_lr, max_lr)``, widened to include the warm-up ramp when there is one (it
        starts at ``warmup_lr / warmup_steps`` and ends at ``warmup_lr``) and, with automatic
        bounds, the range test's sweep (which contains the derived interval)."""
        if self.range_test is not None:
            lo, hi = self.range_test.lr_bounds()
            if math.isfinite(self.min_lr):
                lo, hi = min(lo, self.min_lr), max(hi, self.max_lr)
        else:
            lo, hi = self.min_lr, self.max_lr
        if self.final_decay != "none" and self.max_steps is not None:
            lo = 0.0  # the last run anneals towards 0
        if self.warmup_steps and math.isfinite(self.warmup_lr):
            lo = min(lo, self.warmup_lr / self.warmup_steps)
            hi = max(hi, self.warmup_lr)
        return (lo, hi)

    def summary(self) -> dict:
        cur = self.current
        searched = self.search_steps + self.bounds_steps
        total = searched + self.train_steps
        bounds = self._bounds_state()
        out = {
            "stage": self.stage, "phase": self.phase, "lr": self.lr, "step": self.step,
            "mode": "val" if self.val_mode else "train", "tau": self.tau,
            "search_steps": self.search_steps, "train_steps": self.train_steps,
            "warmup_steps": self.warmup_trained, "bounds_steps": self.bounds_steps,
            "min_lr": bounds["min_lr"], "max_lr": bounds["max_lr"], "bounds_source": bounds["source"],
            "overhead": searched / total if total else 0.0,
        }
        if self.phase == "bounds":
            out["range_test_points"] = len(self.range_test.history["lr"])
        if cur is not None:
            out.update({
                "trial": len(cur["trials"]), "k": self.k, "trial_steps": cur["trial_steps"],
                "exploit_steps": cur["exploit_steps"],
                "trials": [[t["lr"], t["forecast"], t.get("std", 0.0)] for t in cur["trials"]],
            })
            if cur["winner"] is not None:
                out["winner"] = cur["trials"][cur["winner"]]["lr"]
        if self.stages:
            out["last_stage"] = copy.deepcopy(self.stages[-1])
        return out
