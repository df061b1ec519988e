"""AutoLRS's stage machine (Jin et al., ICLR 2021): a constant LR per training stage, chosen by
Bayesian optimisation on loss forecasts. The ``autolrs`` tuner (:mod:`autolrs.tuners.autolrs_tuner`)
wraps it in its phases (automatic bounds, warm-up, the annealed end); this module only knows
stages.

A *stage* searches, then exploits:

* ``k`` trials. Trial ``i`` trains ``tau'`` steps (``tau' = tau * trial_fraction``) from the
  stage checkpoint with candidate LR ``c_i``; its losses (or validation losses) are forecast
  ``tau`` steps ahead and the forecast, plus ``pessimism`` standard deviations, is told to a
  1-D GP over log LR (:mod:`autolrs.gp`), which proposes ``c_{i+1}``. ``c_0`` is a seeded
  log-uniform draw; no LR is tried twice in a stage.
* The winner is chosen among the trials that may win. Training goes on from the stage
  checkpoint (or with ``keep_best`` from the best trial's end weights) for ``tau`` steps. How
  trials are forecast, compared and picked: :mod:`autolrs.tuners.autolrs_trials`.
* Then ``tau`` and ``tau'`` double up to ``tau_max``. Trials are judged on validation loss
  (evaluated ``val_points`` times per trial, horizon in evaluation units) from stage 1 with
  ``val_from_start``, else once a stage with ``tau = tau_max`` has run (the paper).

In the action vocabulary (:mod:`autolrs.actions`) one stage is::

    [checkpoint("stage"), set_lr(c_0), run(tau')]           trial 0
    [restore("stage"),    set_lr(c_i), run(tau')]           trials 1 .. k-1
    [restore("stage"),    set_lr(best), run(tau)]           exploitation

The LR is applied in the same plan as the checkpoint/restore (the original applied it one
message late). With ``keep_best`` the trial whose score is the best so far has its end weights
saved in slot ``"best"`` (``checkpoint("best")`` leads the next plan, before its restore) and
exploitation continues from there (``[restore("best"), discard("best"), set_lr(best),
run(tau)]``, or just ``set_lr`` when the winner was the last trial).

Budget (``max_steps`` known): :meth:`AutoLRSStages._stage_plan`. Stages run in full while they
fit; a stage that would leave less than a first stage's cost adds the remainder to its
exploitation run; one that does not fit is shrunk. The job ends exactly at ``max_steps``.

State is plain JSON: counters, the current stage (:class:`Stage` with its :class:`Trial`
records) and the finished stages' records; the random draws are recomputed from ``(seed,
stage)`` and the GP's from ``(seed, stage, trial)``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from autolrs import actions, gp
from autolrs.actions import Observation
from autolrs.space import LogSpace
from autolrs.tuners.autolrs_records import Settings, Stage, Trial
from autolrs.tuners.autolrs_trials import may_be_best, pick_winner, score, trial_record, unfit_reasons
from autolrs.tuners.base import Tuner

STATE_VERSION = 4  # the stage machine alone; its phases are the autolrs tuner's
PHASES = ("trial", "exploit", "final", "done")


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


class AutoLRSStages(Tuner):
    """The stage machine (see the module doc). Built by the ``autolrs`` tuner, not registered."""

    name = "autolrs"

    def __init__(self, settings: Settings, config: Mapping[str, Any], seed: int = 0):  # noqa: D107
        self.config, self.seed, self.notices = dict(config), int(seed), []
        self.s = settings
        self.space = LogSpace(settings.lr_min, settings.lr_max)
        # Exclusion radius around tried points (unit log-LR interval): a quarter of the spacing
        # k evenly spread points would have, at most 0.05.
        self.min_distance = min(0.05, 0.25 / settings.k)
        self.min_stage_cost = self._cost(settings.tau)
        self.step = 0
        self.lr = settings.start_lr
        self.stage = 0
        self.tau = settings.tau
        self.val_mode = settings.use_val and settings.val_from_start
        self.current: Stage | None = None
        self.stages: list[dict] = []  # finished searches, one record per stage
        self.search_steps = 0
        self.train_steps = 0
        self.stop_reason = ""
        self.phase = "trial"
        self.lr_cap: float | None = None  # the divergence guard's cut of the interval's top
        self._start_stage()

    # ------------------------------------------------------------------ planning

    def _trial_len(self, tau: int) -> int:
        return max(1, _round_half_up(tau * self.s.trial_fraction))

    def _cost(self, tau: int) -> int:
        return self.s.k * self._trial_len(tau) + tau

    def _stage_plan(self, tau: int, remaining: int | None) -> dict | None:
        """Trial and exploitation lengths of the next stage, given the steps left: (1) a stage
        costs ``k * tau' + tau``; it runs as planned if that fits and leaves at least a first
        stage's cost; (2) if it fits but leaves less, the remainder joins its exploitation run;
        (3) if it does not fit, ``tau`` shrinks to the largest that fits, the exploitation run
        taking the slack, so the job ends exactly at the budget; (4) if not even ``tau = 1``
        fits, the rest trains at the current LR (None). Without ``max_steps``: as planned."""
        tp = self._trial_len(tau)
        if remaining is None:
            return {"tau": tau, "trial_steps": tp, "exploit_steps": tau}
        cost = self._cost(tau)
        if cost <= remaining:
            left = remaining - cost
            return {"tau": tau, "trial_steps": tp, "exploit_steps": tau + left if left < self.min_stage_cost else tau}
        if self._cost(1) > remaining:
            return None
        lo, hi = 1, tau  # cost(lo) fits, cost(hi) does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if self._cost(mid) <= remaining else (lo, mid)
        tp = self._trial_len(lo)
        return {"tau": tau, "trial_steps": tp, "exploit_steps": remaining - self.s.k * tp}

    def _remaining(self) -> int | None:
        return None if self.s.max_steps is None else self.s.max_steps - self.step

    def _seed_seq(self, *keys: int) -> np.random.SeedSequence:
        return np.random.SeedSequence([self.seed % (2**63), *keys])

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
        first = self.space.sample(np.random.default_rng(self._seed_seq(self.stage, 0)))
        self.current = Stage(
            stage=self.stage,
            tau=plan["tau"],
            trial_steps=tp,
            exploit_steps=plan["exploit_steps"],
            mode="val" if self.val_mode else "train",
            eval_every=max(1, tp // self.s.val_points) if self.val_mode else 0,
            start_step=self.step,
            next_lr=first,
        )
        self.phase = "trial"

    # ------------------------------------------------------------------ trials and decisions

    def _suggest(self) -> float:
        cur = self.current
        us = [t.u for t in cur.trials]
        ys = [math.inf if t.failed else score(t, self.s) for t in cur.trials]
        seed = int(self._seed_seq(self.stage, len(cur.trials)).generate_state(1)[0])
        # Each fit starts from the stage's previous one: one more point moves the optimum little.
        u, theta = gp.suggest_warm(
            us,
            ys,
            cur.gp_theta,
            acquisition=self.s.acquisition,
            kappa=self.s.kappa,
            seed=seed,
            min_distance=self.min_distance,
        )
        if theta is not None:
            cur.gp_theta = [float(x) for x in theta]
        lr = self.space.from_unit(u)
        if lr in {t.lr for t in cur.trials}:  # only if the interval is exhausted at this resolution
            lr = self.space.from_unit(gp.largest_gap(us))
        return lr

    def _end_search(self) -> None:
        cur = self.current
        cur.winner = w = pick_winner(cur.trials, self.s)
        reasons = unfit_reasons(cur.trials, self.s)
        self.stages.append(
            {
                "stage": cur.stage,
                "start_step": cur.start_step,
                "mode": cur.mode,
                "tau": cur.tau,
                "trial_steps": cur.trial_steps,
                "exploit_steps": cur.exploit_steps,
                "eval_every": cur.eval_every,
                "trials": [
                    {"lr": t.lr, "forecast": t.forecast, "std": t.std, "status": t.status, "unstable": r}
                    for t, r in zip(cur.trials, reasons)
                ],
                "winner": cur.trials[w].lr,
                "winner_forecast": cur.trials[w].forecast,
                "all_failed": all(t.failed for t in cur.trials),
            }
        )
        self.phase = "exploit"

    def _end_stage(self) -> None:
        if self.tau < self.s.tau_max:
            self.tau = min(2 * self.tau, self.s.tau_max)
        elif self.s.use_val:
            self.val_mode = True
        self._start_stage()

    # ------------------------------------------------------------------ Tuner API

    def _run(self, steps: int, **kwargs: Any) -> dict:
        """A ``run`` action, truncated at the budget (only matters if the client's step count
        jumped ahead of the plan)."""
        remaining = self._remaining()
        return actions.run(steps if remaining is None else min(steps, remaining), self.step, **kwargs)

    def ask(self) -> list[dict]:
        remaining = self._remaining()
        if self.phase == "done" or (remaining is not None and remaining <= 0):
            return [actions.stop(self.stop_reason or "max_steps")]
        if self.phase == "final":
            return [actions.set_lr(self.lr), actions.run(remaining, self.step, collect=())]
        cur = self.current
        if self.phase == "trial":
            plan: list[dict] = []
            if not cur.trials:
                plan.append(actions.checkpoint("stage"))
            else:
                if cur.save_best:
                    plan.append(actions.checkpoint("best"))
                plan.append(actions.restore("stage"))
            plan.append(actions.set_lr(cur.next_lr))
            plan.append(self._run(cur.trial_steps, eval_every=cur.eval_every))
            return plan
        lr = cur.trials[cur.winner].lr
        return self._exploit_prefix(cur.winner) + [actions.set_lr(lr), self._run(cur.exploit_steps, collect=())]

    def _exploit_prefix(self, w: int) -> list[dict]:
        """The weights the winner's run starts from: the stage checkpoint, or the best trial's."""
        cur = self.current
        plan = []
        if self.s.keep_best and cur.best_slot == w:
            if w != len(cur.trials) - 1:
                plan += [actions.restore("best"), actions.discard("best")]
            elif cur.best_saved:
                plan.append(actions.discard("best"))  # an older best; the winner is in place
        else:
            plan.append(actions.restore("stage"))
            if cur.best_saved:
                plan.append(actions.discard("best"))
        return plan

    def tell(self, observation: Observation) -> None:
        if self.phase == "done":
            return
        self.step = max(0, int(observation.step))
        if self.phase == "final":
            self.train_steps += max(0, observation.steps) or 0
            self.phase, self.stop_reason = "done", "max_steps"
            return
        cur = self.current
        if self.phase == "trial":
            record = trial_record(observation, cur, self.s)
            trial = Trial(lr=cur.next_lr, u=self.space.to_unit(cur.next_lr), **record)
            i = len(cur.trials)
            cur.trials.append(trial)
            self.search_steps += cur.trial_steps
            self.lr = trial.lr
            if cur.save_best:  # the plan just carried out saved the previous best
                cur.save_best, cur.best_saved = False, True
            if self.s.keep_best and may_be_best(trial, self.s):
                b = cur.best_slot
                if b is None or score(trial, self.s) < score(cur.trials[b], self.s):
                    cur.best_slot = i
                    cur.save_best = i < self.s.k - 1
            if len(cur.trials) < self.s.k:
                cur.next_lr = self._suggest()
            else:
                cur.next_lr = None
                self._end_search()
            return
        self.train_steps += max(0, observation.steps) or cur.exploit_steps
        self.lr = cur.trials[cur.winner].lr
        self._end_stage()

    def in_search(self) -> bool:
        return self.phase == "trial"

    def resume(self, step: int) -> None:
        """A stage in progress starts again at ``step``: its trials were measured from weights
        (the stage slot, the best trial's) a restarted trainer no longer has. The steps they
        took stay counted. The final run goes on at ``step``."""
        self.step = max(0, int(step))
        if self.phase in ("trial", "exploit"):
            self.stage -= 1  # the same stage, from the beginning
            self._start_stage()

    def on_rollback(self, factor: float, info: Mapping[str, Any]) -> None:
        """The divergence guard undid training at ``info["lr_before"]``: the rest of the stage
        (or of the final run) trains at ``factor`` times its LR, and later stages search below
        the LR that diverged (the interval's top lowered, its width in decades kept)."""
        cur = self.current
        if self.phase == "exploit" and cur is not None and cur.winner is not None:
            cur.trials[cur.winner].lr *= factor  # the LR the stage's plans read; its record keeps the original
        elif self.phase == "final":
            self.lr *= factor
        before = info.get("lr_before")
        if before is not None and before * factor < self.space.max_lr:
            self.lr_cap = before * factor
            self.space = self._space()

    def _space(self) -> LogSpace:
        """The search interval, below the guard's cap if there is one."""
        lo, hi = self.s.lr_min, self.s.lr_max
        if self.lr_cap is not None and self.lr_cap < hi:
            lo, hi = (lo if lo < self.lr_cap else self.lr_cap * lo / hi), self.lr_cap
        return LogSpace(lo, hi)

    def lr_bounds(self) -> tuple[float, float]:
        return (min(self.s.lr_min, self.s.start_lr), max(self.s.lr_max, self.s.start_lr))

    def state_dict(self) -> dict:
        return {
            "version": STATE_VERSION,
            "step": self.step,
            "lr": self.lr,
            "phase": self.phase,
            "stage": self.stage,
            "tau": self.tau,
            "val_mode": self.val_mode,
            "current": None if self.current is None else self.current.to_json(),
            "stages": copy.deepcopy(self.stages),
            "search_steps": self.search_steps,
            "train_steps": self.train_steps,
            "stop_reason": self.stop_reason,
            "lr_cap": self.lr_cap,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"autolrs: unsupported stage state version {state.get('version')!r}")
        if state["phase"] not in PHASES:
            raise ValueError(f"autolrs: unknown phase {state['phase']!r}")
        self.step, self.lr, self.phase = int(state["step"]), float(state["lr"]), state["phase"]
        self.stage, self.tau, self.val_mode = int(state["stage"]), int(state["tau"]), bool(state["val_mode"])
        self.current = None if state["current"] is None else Stage.from_json(state["current"])
        self.stages = copy.deepcopy(list(state["stages"]))
        self.search_steps, self.train_steps = int(state["search_steps"]), int(state["train_steps"])
        self.stop_reason = str(state["stop_reason"])
        self.lr_cap = state.get("lr_cap")
        self.space = self._space()

    def summary(self) -> dict:
        cur = self.current
        out = {
            "stage": self.stage,
            "phase": self.phase,
            "lr": self.lr,
            "step": self.step,
            "mode": "val" if self.val_mode else "train",
            "tau": self.tau,
            "search_steps": self.search_steps,
            "train_steps": self.train_steps,
            "lr_min": self.space.min_lr,
            "lr_max": self.space.max_lr,
        }
        if cur is not None:
            out.update(
                {
                    "trial": len(cur.trials),
                    "k": self.s.k,
                    "trial_steps": cur.trial_steps,
                    "exploit_steps": cur.exploit_steps,
                    "trials": [[t.lr, t.forecast, t.std] for t in cur.trials],
                }
            )
            if cur.winner is not None:
                out["winner"] = cur.trials[cur.winner].lr
        if self.stages:
            out["last_stage"] = copy.deepcopy(self.stages[-1])
            out["winners"] = [[st["start_step"], st["winner"]] for st in self.stages]
        return out
