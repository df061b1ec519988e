"""``auto``: the recommended tuner. One run, a small share of it spent deciding, then an
annealed schedule from the chosen peak LR, watched for divergence and (with a ``val_fn``) for
overfitting. Phases, all within ``max_steps`` (required):

1. **sweep**: an LR range test (:class:`~autolrs.tuners.range_test.RangeTestTuner`) from
   ``initial_lr / 1e4`` to ``initial_lr * 1000`` (wide enough for Adam's LR scale, and for an
   optimizer LR 10x off) over ``sweep_fraction`` of the budget (30 to 100 steps; fewer only
   within a tenth of a budget under 300 steps), weights restored afterwards. ``rule``
   (``minimum``: the lowest loss's LR / 10, :mod:`autolrs.lr_curve`) on the lag-free curve
   (:func:`autolrs.lr_curve.centred`; no tail skipped when the sweep never diverged) gives the
   centre ``p``; a sweep whose loss never fell 2 % is no evidence: ``p`` is the optimizer's LR.
2. **trials**: ``candidates`` LRs ``p * spacing ** j`` around ``p`` (``2p, p, p/2``), largest
   first, each trained ``trial_fraction`` of the budget from one checkpoint with the LR annealed
   linearly to 0 (an annealed short run ranks LRs far better than a constant one: a large
   constant LR looks best early and worst late), scored by its final validation loss (with a
   ``val_fn``) or the mean training loss of its last fifth. A trial worse than the best so far
   ends them (the score is taken as unimodal in the LR; the largest LR wins most often). The
   run continues from the best one's end weights: only the losers' steps are spent.
3. **train**: a linear warm-up over ``warmup_fraction`` of the budget to the winner's LR, then
   cosine to 0 at the last step. Every ``check_fraction`` of the budget the client reports
   (with one ``val_fn`` call), and the tuner checks the segment (:mod:`autolrs.divergence`): a
   non-finite loss, a spike or a sustained rise of the training loss, or a validation loss
   above its best for two reports in a row, restores the last good checkpoint (the best
   validation point with a ``val_fn``) and anneals the remaining steps from ``cut`` times the LR
   there. After ``max_cuts`` cuts a further divergence stops the job, the reason in its summary.

Search share: ``sweep_fraction + (candidates - 1) * trial_fraction`` at most (11 % by default,
8 % when the largest LR wins). Memory: two extra copies of model and optimizer in the trials.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from autolrs import actions, divergence, lr_curve
from autolrs.actions import Observation
from autolrs.tuners.auto_knobs import KNOBS, LIMITS, read_settings
from autolrs.tuners.base import Tuner
from autolrs.tuners.phases import warmup_cosine
from autolrs.tuners.range_test import SLOT as SWEEP_SLOT
from autolrs.tuners.range_test import RangeTestTuner

STATE_VERSION = 1
PHASES = ("sweep", "trials", "train", "done")
BASE, BEST, GOOD = "auto_base", "auto_best", "auto_good"
FALL = 0.02  # a sweep whose smoothed loss never falls 2 % below its start saw no learning


class AutoTuner(Tuner):
    """Range test, a few annealed trials, then an annealed run that rolls back on trouble."""

    name = "auto"
    knobs = KNOBS
    limits = LIMITS

    def __init__(self, config: Mapping[str, Any] | None = None, seed: int = 0):
        super().__init__(config, seed)
        s = read_settings(self.config)
        self.max_steps, self.initial_lr, self.use_val = s.max_steps, s.initial_lr, s.use_val
        self.sweep_min, self.sweep_max, self.rule = s.sweep_min, s.sweep_max, s.rule
        self.n_candidates, self.spacing, self.cut, self.max_cuts = s.n_candidates, s.spacing, s.cut, s.max_cuts
        self.sweep_steps, self.trial_steps, self.check_steps = s.sweep_steps, s.trial_steps, s.check_steps
        self.warmup_frac = s.warmup_fraction
        self._init_state()

    def _init_state(self) -> None:
        self.step = 0
        self.lr = self.initial_lr
        self.phase = "sweep"
        self.sweep = RangeTestTuner(
            {
                "start_lr": self.sweep_min,
                "end_lr": self.sweep_max,
                "num_iter": self.sweep_steps,
                "method": self.rule,
                "initial_lr": self.initial_lr,
                "max_steps": self.max_steps,
            },
            self.seed,
        )
        self.sweep_result: dict = {}
        self.search_steps = 0
        self.candidates: list[float] = []
        self.trials: list[dict] = []  # {"lr", "score"}
        self.best: int | None = None
        self.save_best = False  # the next plan first saves the previous trial's end weights as BEST
        self.best_saved = False  # BEST holds something
        self.prefix: list[dict] = []  # actions owed to the next plan (the sweep's restore)
        self.train: dict = {}
        self.events: list[dict] = []  # rollbacks and stops, for the summary
        self.stop_reason = ""

    # ------------------------------------------------------------------ sweep -> candidates

    def _end_sweep(self) -> None:
        rt = self.sweep
        self.search_steps += max(len(rt.history["lr"]), rt.pos)
        # The rule on the lag-free curve: a short sweep is all lag for an exponential average.
        # A sweep that never diverged has no divergence tail to skip: its last points count.
        curve = lr_curve.centred(rt.history["loss"])
        skips = {"skip_end": 0} if rt.done != "diverged" else {}
        suggestion = lr_curve.suggest(rt.history["lr"], curve, self.rule, **skips)
        centre = suggestion.get("lr")
        source = f"range test ({rt.done}, {len(rt.history['lr'])} points, {self.rule})"
        if centre is None or not lr_curve.fell(curve, FALL):  # too short, or the loss never fell: the optimizer's LR
            reason = suggestion.get("reason") or "the loss did not fall during the sweep"
            centre, source = self.initial_lr, f"optimizer LR (no {self.rule} suggestion: {reason})"
        centre = min(max(centre, self.sweep_min), self.sweep_max)
        k = self.n_candidates
        self.candidates = [centre * self.spacing ** ((k - 1) / 2 - j) for j in range(k)]  # largest first
        self.sweep_result = {"centre": centre, "source": source, "done": rt.done, "points": len(rt.history["lr"])}
        self.prefix = [actions.restore(SWEEP_SLOT), actions.discard(SWEEP_SLOT)]
        self.phase = "trials"

    # ------------------------------------------------------------------ trials

    def _trial_plan(self) -> list[dict]:
        i = len(self.trials)
        plan: list[dict] = list(self.prefix)
        if i == 0:
            plan.append(actions.checkpoint(BASE))
        else:
            if self.save_best:
                plan.append(actions.checkpoint(BEST))
            plan.append(actions.restore(BASE))
        lr = self.candidates[i]
        n = self._fit(self.trial_steps)
        lrs = [lr * (1 - j / n) for j in range(n)]  # linear decay to 0
        plan.append(actions.run(n, self.step, lrs=lrs, eval_every=n if self.use_val else 0))
        return plan

    def _trial_score(self, obs: Observation) -> float:
        losses = [x for x in obs.losses if x is not None]
        if any(not math.isfinite(x) for x in losses):
            return math.inf
        if self.use_val:
            vals = [v for p, v in obs.evals if p > 0]
            if vals:
                return float(vals[-1]) if math.isfinite(vals[-1]) else math.inf
        tail = losses[-max(1, len(losses) // 5) :]
        return sum(tail) / len(tail) if tail else math.inf

    def _end_trials(self) -> None:
        finite = [i for i, t in enumerate(self.trials) if math.isfinite(t["score"])]
        last = len(self.trials) - 1
        plan: list[dict] = []
        if finite:
            winner = min(finite, key=lambda i: (self.trials[i]["score"], i))  # == self.best
            if winner != last:
                plan.append(actions.restore(BEST))
            peak = self.trials[winner]["lr"]
        else:  # every trial diverged: from the start, below the smallest LR tried
            winner = None
            plan.append(actions.restore(BASE))
            peak = min(self.candidates) / self.spacing
        plan.append(actions.discard(BASE))
        if self.best_saved:
            plan.append(actions.discard(BEST))
        spent = sum(t["steps"] for t in self.trials)
        self.search_steps += spent - (self.trials[winner]["steps"] if winner is not None else 0)
        self.prefix = plan
        self.train = {
            "peak": peak,
            "winner": winner,
            "start": self.step,
            "warmup": round(self.warmup_frac * self.max_steps),
            "piece_lr": peak,
            "piece_start": self.step,
            "cuts": 0,
            "good_step": None,
            "best_val": None,
            "val_bad": 0,
            "medians": [],
            "last_lr": peak,
        }
        self.phase = "train"

    # ------------------------------------------------------------------ training

    def _train_lr(self, step: int) -> float:
        """The LR of global ``step`` in the current piece of the annealed run."""
        t = self.train
        i = max(0, step - t["piece_start"])  # a client that reports an earlier step stays at the start
        n = self.max_steps - t["piece_start"]
        warmup = t["warmup"] if t["cuts"] == 0 else 0
        return warmup_cosine(t["piece_lr"], i, n, warmup)

    def _train_plan(self) -> list[dict]:
        t = self.train
        plan: list[dict] = list(self.prefix)
        if t["good_step"] is None:  # the run's starting point is the first good one
            plan.append(actions.checkpoint(GOOD))
        n = self._fit(self.check_steps)
        lrs = [self._train_lr(self.step + j) for j in range(n)]
        plan.append(actions.run(n, self.step, lrs=lrs, eval_every=n if self.use_val else 0))
        return plan

    def _tell_train(self, obs: Observation) -> None:
        t = self.train
        if t["good_step"] is None:
            t["good_step"] = t["start"]
        n = self._fit(self.check_steps)
        t["last_lr"] = self.lr = self._train_lr(self.step + n - 1)
        self.step = max(0, int(obs.step))
        losses = list(obs.losses)
        vals = [v for p, v in obs.evals if p > 0]
        verdict = divergence.check_segment(losses, t["medians"])
        if verdict is None and self.use_val and vals:
            verdict = self._check_val(vals[-1])
        if verdict is None:
            if losses:
                t["medians"].append(divergence.segment_level(losses))
            if not self.use_val or (vals and t["best_val"] == vals[-1]):
                self.prefix = [actions.checkpoint(GOOD)]  # this point is the new last good one
                t["good_step"] = self.step
            else:
                self.prefix = []
            self._maybe_finish()
            return
        self._rollback(verdict)

    def _check_val(self, value: float) -> str | None:
        t = self.train
        if not math.isfinite(value):
            return "non-finite validation loss"
        if t["best_val"] is None or value < t["best_val"]:
            t["best_val"], t["val_bad"] = value, 0
            return None
        if value > t["best_val"] * (1 + divergence.VAL_TOLERANCE):
            t["val_bad"] += 1
            if t["val_bad"] >= 2:
                return (
                    f"validation loss {value:.4g} above its best {t['best_val']:.4g} for "
                    f"{t['val_bad']} reports (overfitting)"
                )
        return None

    def _rollback(self, reason: str) -> None:
        t = self.train
        if t["cuts"] >= self.max_cuts and not reason.startswith("validation"):
            self.events.append({"step": self.step, "action": "stop", "reason": reason})
            self.phase, self.stop_reason = "done", f"diverged after {t['cuts']} LR cuts: {reason}"
            self.prefix = [actions.restore(GOOD), actions.discard(GOOD)]
            return
        lr_before = t["last_lr"]
        new_lr = self._train_lr(t["good_step"]) * self.cut
        if t["cuts"] == 0 and t["good_step"] - t["piece_start"] < t["warmup"]:
            new_lr = t["piece_lr"] * self.cut  # rolled back into the warm-up: cut the peak instead
        t["cuts"] += 1
        t["piece_lr"], t["piece_start"] = new_lr, self.step
        t["val_bad"] = 0
        t["medians"] = [m for m in t["medians"]][:1]  # keep the first level as the reference
        self.events.append(
            {
                "step": self.step,
                "action": "rollback",
                "reason": reason,
                "to_step": t["good_step"],
                "lr_before": lr_before,
                "lr_after": new_lr,
            }
        )
        self.prefix = [actions.restore(GOOD)]
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if self.step >= self.max_steps:
            self.phase, self.stop_reason = "done", self.stop_reason or "max_steps"
            self.prefix += [actions.discard(GOOD)]

    def _fit(self, n: int) -> int:
        """``n`` steps, or fewer where the budget ends."""
        return max(1, min(n, self.max_steps - self.step))

    # ------------------------------------------------------------------ Tuner API

    def ask(self) -> list[dict]:
        if self.phase == "sweep":
            return self.sweep.ask()
        if self.phase == "done" or self.step >= self.max_steps:
            return list(self.prefix) + [actions.stop(self.stop_reason or "max_steps")]
        if self.phase == "trials":
            return self._trial_plan()
        return self._train_plan()

    def tell(self, observation: Observation) -> None:
        if self.phase == "done":
            return
        if self.phase == "sweep":
            self.sweep.tell(observation)
            self.step = max(0, int(observation.step))
            if self.sweep.done is not None:
                self._end_sweep()
            return
        if self.phase == "trials":
            steps = self._fit(self.trial_steps)
            self.step = max(0, int(observation.step))
            i = len(self.trials)
            score = self._trial_score(observation)
            self.trials.append({"lr": self.candidates[i], "score": score, "steps": steps})
            self.lr = self.candidates[i]
            self.prefix = []
            if self.save_best:  # the plan just carried out saved the previous best
                self.save_best, self.best_saved = False, True
            if math.isfinite(score) and (self.best is None or score < self.trials[self.best]["score"]):
                self.best = i
                self.save_best = i < len(self.candidates) - 1
            passed = self.best is not None and self.best != i  # worse than a trial before it
            if passed or len(self.trials) >= len(self.candidates) or self.step >= self.max_steps:
                self._end_trials()
            return
        self._tell_train(observation)

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        return {
            "version": STATE_VERSION,
            "step": self.step,
            "lr": self.lr,
            "phase": self.phase,
            "sweep": self.sweep.state_dict(),
            "sweep_result": dict(self.sweep_result),
            "search_steps": self.search_steps,
            "candidates": list(self.candidates),
            "trials": [dict(t) for t in self.trials],
            "best": self.best,
            "save_best": self.save_best,
            "best_saved": self.best_saved,
            "prefix": [dict(a) for a in self.prefix],
            "train": _copy(self.train),
            "events": [dict(e) for e in self.events],
            "stop_reason": self.stop_reason,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"auto: unsupported state version {state.get('version')!r}")
        if state["phase"] not in PHASES:
            raise ValueError(f"auto: unknown phase {state['phase']!r}")
        self.step, self.lr, self.phase = int(state["step"]), float(state["lr"]), state["phase"]
        self.sweep.load_state_dict(state["sweep"])
        self.sweep_result = dict(state["sweep_result"])
        self.search_steps = int(state["search_steps"])
        self.candidates = [float(x) for x in state["candidates"]]
        self.trials = [dict(t) for t in state["trials"]]
        self.best = state["best"]
        self.save_best = bool(state["save_best"])
        self.best_saved = bool(state["best_saved"])
        self.prefix = [dict(a) for a in state["prefix"]]
        self.train = _copy(state["train"])
        self.events = [dict(e) for e in state["events"]]
        self.stop_reason = str(state["stop_reason"])

    def in_search(self) -> bool:
        return self.phase in ("sweep", "trials")

    def resume(self, step: int) -> None:
        """A trainer restarted from its checkpoint at ``step`` holds none of the slots: a search
        in progress starts again from there; training goes on, with its next plan saving a new
        good point."""
        step = max(0, int(step))
        if self.phase in ("sweep", "trials"):
            events = self.events
            self._init_state()
            self.events = events
            self.sweep.step = step
        elif self.phase == "train":
            self.prefix = []
            self.train["good_step"] = None
        self.step = step

    def lr_bounds(self) -> tuple[float, float]:
        lo = min(self.sweep_min, self.initial_lr)
        hi = max(self.sweep_max, self.initial_lr)
        return (0.0, hi * self.spacing**self.n_candidates) if lo > 0 else (0.0, hi)

    def summary(self) -> dict:
        t = self.train
        out = {
            "phase": self.phase,
            "step": self.step,
            "search_steps": self.search_steps,
            "train_steps": max(0, self.step - self.search_steps) if self.phase in ("train", "done") else 0,
            "overhead": self.search_steps / self.step if self.step else 0.0,
            "sweep": dict(self.sweep_result),
            "candidates": list(self.candidates),
            "trials": [[x["lr"], x["score"]] for x in self.trials],
            "events": [dict(e) for e in self.events],
            "stop_reason": self.stop_reason,
        }
        if t:
            out.update(peak=t["peak"], cuts=t["cuts"], lr=t["last_lr"])
        return out


def _copy(d: Mapping[str, Any]) -> dict:
    return {k: (list(v) if isinstance(v, list) else v) for k, v in d.items()}
