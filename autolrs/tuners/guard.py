"""The divergence guard: any tuner's training, rolled back to the last good point and slowed
down when its loss blows up (the rules, knobs, figures and limits: docs/guard.md).

:class:`Guarded` wraps a tuner the way ``torch.optim.lr_scheduler.ChainedScheduler`` wraps
schedulers: it asks the inner tuner for its plans and edits them, with the verbs the wire
already has. The inner tuner's training runs go out in segments of at most ``guard_every``
steps (:func:`~autolrs.tuners.guard_knobs.default_every`), each judged against what the guard
knows of the loss (:mod:`~autolrs.tuners.guard_watch`); a checkpoint in slot ``"guard"`` is refreshed after
healthy stretches; a divergence restores it and cuts the LR by ``guard_factor``, and the inner
tuner hears of it through :meth:`~autolrs.tuners.base.Tuner.on_rollback` before the observation
of its run (without the undone segments). After ``guard_max`` rollbacks in a row a further
divergence stops the job. Searches (:meth:`~autolrs.tuners.base.Tuner.in_search`) go out
unchanged. Every action is an event in :meth:`Guarded.summary`, so the decision log has a line
for each. The wrapper's ``state_dict()`` is the inner tuner's with one more key, ``"guard"``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from autolrs import actions
from autolrs.actions import Observation
from autolrs.tuners.base import Tuner
from autolrs.tuners.guard_knobs import default_every
from autolrs.tuners.guard_plans import copy_progress, first_lr, joined, last_lr, merged, next_segment, rest_of_run
from autolrs.tuners.guard_watch import LossWatch

SLOT = "guard"
STATE_VERSION = 1
#: What the guard keeps of an inner run in flight (the run itself is the inner tuner's plan).
PROGRESS = ("consumed", "started", "scale", "lr", "segments", "committed", "rollbacks")
#: Guard events kept in the state and summary (the decision log keeps every one).
EVENTS_KEPT = 50


class Guarded(Tuner):
    """``inner`` with the divergence guard (see the module doc)."""

    def __init__(self, inner: Tuner, every: int | None = None, factor: float = 0.5, max_rollbacks: int = 5):
        # Not Tuner.__init__: the config and the job's facts are the inner tuner's.
        self.inner = inner
        self.name = inner.name  # type: ignore[misc]  # the wrapper answers to its inner tuner's name
        self.config = inner.config
        self.seed = inner.seed
        self.notices = inner.notices
        self.deprecations = getattr(inner, "deprecations", [])
        self.every = default_every(inner.config.get("max_steps")) if every is None else int(every)
        self.factor, self.max_rollbacks = float(factor), int(max_rollbacks)
        self._reset()

    def __getattr__(self, name: str) -> Any:
        # What the guard does not have is the inner tuner's (its history, stages, suggestions).
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def _reset(self) -> None:
        self._asked: tuple[list[dict], bool] | None = None  # the inner tuner's plan, until it is told something
        initial = self.config.get("initial_lr")
        self._step = 0
        #: The LR the client is at (the last one a plan set), None while unknown.
        self._lr: float | None = float(initial) if isinstance(initial, (int, float)) and initial > 0 else None
        self._slot = False  # the guard slot holds a snapshot
        self._good_step: int | None = None  # the step it was taken at
        self._base_step = 0  # the step the weights last were the snapshot's (taken or restored)
        self._save_due = False  # the next plan refreshes the snapshot
        self._pending: dict | None = None  # the inner run in flight, when it is split
        self._owed: dict | None = None  # a rollback the next plan carries out: {"lr": cut LR or None}
        self._watch = LossWatch()  # the loss levels segments are judged against
        self._strikes = 0  # rollbacks since the last healthy window
        self._rollbacks = 0
        self._snapshots = 0
        self._steps_lost = 0
        self._scale = 1.0  # product of all LR cuts
        self._events: list[dict] = []
        self._action: dict | None = None  # the event the last report caused
        self._stopped: str | None = None

    # ------------------------------------------------------------------ plans

    def _current(self) -> dict:
        """The inner run in flight: the inner tuner's plan, with the guard's progress through it.
        The inner tuner is told nothing until its run is done, so asking it again gives the
        same plan back: only the progress (``PROGRESS``) is state."""
        if self._asked is None:  # the inner tuner changes only through this wrapper: ask it once a change
            self._asked = (self.inner.ask(), self.inner.in_search())
        (*prefix, last), search = self._asked
        whole = (
            last["op"] != "run"
            or search
            or (last.get("hypergrad") or {}).get("method") == "tangent"
            or last["steps"] <= self.every
        )
        progress = self._pending
        if progress is None:
            lr = self._lr
            for action in prefix:
                if action["op"] == "set_lr":
                    lr = action["lr"]
            progress = {
                "consumed": 0,
                "started": False,
                "scale": 1.0,
                "lr": lr,
                "segments": [],
                "committed": 0,
                "rollbacks": [],
            }
        # Fresh lists: tell() edits them; the segments themselves are never edited.
        return {
            "prefix": prefix,
            "last": last,
            "search": search,
            "whole": whole,
            **progress,
            "segments": list(progress["segments"]),
            "rollbacks": list(progress["rollbacks"]),
        }

    def _compose(self, p: dict) -> tuple[list[dict], dict]:
        """The plan for the next segment of ``p`` and what it does to the guard's slot."""
        plan: list[dict] = []
        effects: dict[str, Any] = {"checkpoint": False, "discard": False, "restore": False, "run": None}
        if self._owed is not None:
            plan.append(actions.restore(SLOT))
            effects["restore"] = True
            if self._owed.get("lr") is not None:
                plan.append(actions.set_lr(self._owed["lr"]))
        last = p["last"]
        if last["op"] == "stop" or p["search"]:
            plan += [dict(a) for a in p["prefix"]]
            if self._slot:  # a search brings its own copies; the guard's is saved again after it
                plan.append(actions.discard(SLOT))
                effects["discard"] = True
            plan.append(dict(last))
            effects["run"] = plan[-1] if last["op"] == "run" else None
            return plan, effects
        if not p["started"]:
            plan += [dict(a) for a in p["prefix"]]
        jumped = not p["started"] and any(a["op"] == "restore" for a in p["prefix"])
        if not self._slot or self._save_due or jumped:
            plan += [actions.discard(SLOT), actions.checkpoint(SLOT)]
            effects["checkpoint"] = True
        run = dict(last) if p["whole"] else next_segment(p, self.every)
        if "loss" not in run.get("collect", ["loss"]):  # the guard judges every segment's losses
            run["collect"] = ["loss"] + list(run.get("collect", []))
        plan.append(run)
        effects["run"] = run
        return plan, effects

    def ask(self) -> list[dict]:
        if self._stopped is not None:
            return self._stop_plan()
        return self._compose(self._current())[0]

    def _stop_plan(self) -> list[dict]:
        plan = [actions.restore(SLOT), actions.discard(SLOT)] if self._slot else []
        return plan + [actions.stop(f"guard: {self._stopped}")]

    # ------------------------------------------------------------------ reports

    def tell(self, observation: Observation) -> None:
        if self._stopped is not None:
            self._step = max(self._step, int(observation.step))
            return
        p = self._current()
        plan, effects = self._compose(p)
        start_step = self._step
        self._carried_out(plan, effects, start_step)
        self._action = None
        self._step = max(0, int(observation.step))
        if p["search"] or p["last"]["op"] != "run":
            self._pending, self._asked = None, None
            self.inner.tell(observation)
            return
        p["started"] = True
        r = p["last"]
        ran = observation.step - r["start_step"]
        consumed = ran if ran > p["consumed"] else p["consumed"] + max(1, observation.steps)
        segment = {
            "at": p["consumed"],
            "steps": consumed - p["consumed"],
            "losses": list(observation.losses),
            "evals": [[int(q), float(v)] for q, v in observation.evals],
            "hypergrad": copy.deepcopy(observation.hypergrad),
            "probes": [list(x) for x in observation.probes],
        }
        p["consumed"] = consumed
        verdict = self._watch.judge(observation.losses, segment["steps"])
        if verdict.kind == "diverged":
            self._rollback(p, verdict.reason)
        else:
            p["segments"].append(segment)
            if verdict.kind == "ok" and self._watch.window_steps >= self.every:
                if self._watch.close_window():  # a healthy window of a run under way: save its state
                    self._save_due = True
                    self._strikes = 0
                    p["committed"] = len(p["segments"])
            elif verdict.kind == "suspect":
                self._event("suspect", verdict.reason)
        if self._stopped is not None:
            self._pending = None
            return
        if p["consumed"] >= r["steps"]:
            self._pending, self._asked = None, None
            for info in p["rollbacks"]:  # the inner tuner follows the cuts, then hears how its run went
                self.inner.on_rollback(self.factor, info)
            self.inner.tell(merged(p, observation))
        else:
            self._pending = {key: p[key] for key in PROGRESS}
        if self._action is not None and self._action["action"] == "rollback":
            self._action["lr_after"] = first_lr(self.ask())  # what the next step really trains at

    def _carried_out(self, plan: list[dict], effects: dict, start_step: int) -> None:
        """Update what the guard knows of the client after it carried out ``plan``."""
        if effects["restore"]:
            self._owed = None
            self._base_step = start_step
        if effects["discard"]:
            self._slot, self._good_step = False, None
        if effects["checkpoint"]:
            self._slot, self._good_step, self._save_due = True, start_step, False
            self._base_step = start_step
            self._watch.new_window()
            self._snapshots += 1
        lr = last_lr(plan)
        if lr is not None:
            self._lr = lr

    def _rollback(self, p: dict, reason: str) -> None:
        lost = self._step - self._base_step  # training steps the restore undoes
        lr_before = self._lr
        if self._strikes >= self.max_rollbacks:
            self._stopped = (
                f"diverged after {self._strikes} rollback(s) in a row (LR cut to {self._scale:.3g}x): {reason}"
            )
            self._event("stop", reason, to_step=self._good_step, steps_back=lost, lr_before=lr_before)
            return
        self._strikes += 1
        self._rollbacks += 1
        self._steps_lost += lost
        self._scale *= self.factor
        del p["segments"][p["committed"] :]  # their weights are undone
        p["scale"] *= self.factor
        lr_after = None if lr_before is None else lr_before * self.factor
        if not p["whole"] and p["last"].get("lrs") is None and p["lr"] is not None:
            lr_after = p["lr"] * p["scale"]  # the rest of the run, which sets no LR of its own
        self._owed = {"lr": lr_after}
        self._watch.new_window()
        self._save_due = False
        info = {
            "step": self._step,
            "to_step": self._good_step,
            "steps_back": lost,
            "lr_before": lr_before,
            "reason": reason,
            "rollbacks": self._rollbacks,
            "strikes": self._strikes,
        }
        self._event(
            "rollback",
            reason,
            to_step=self._good_step,
            steps_back=lost,
            lr_before=lr_before,
            lr_after=lr_after,
            strike=self._strikes,
        )
        p["rollbacks"].append(info)

    def _event(self, kind: str, reason: str, **fields: Any) -> None:
        event = {"step": self._step, "action": kind, "reason": reason, **fields}
        self._action = event
        self._events.append(event)
        del self._events[:-EVENTS_KEPT]

    # ------------------------------------------------------------------ the rest of the contract

    def in_search(self) -> bool:
        return self.inner.in_search()

    def ask_next(self) -> list[dict] | None:
        """What a client cut off from the server trains on after the current plan: the rest of
        the inner run in flight (unsplit, at the cut LRs), or, when the current plan ends it,
        the inner tuner's next plan. It touches no slot: offline there is no guard, and the
        server's reply, when it comes, takes over from wherever the client is."""
        if self._stopped is not None:
            return None
        p = self._current()
        last = p["last"]
        if p["search"] or last["op"] != "run" or last.get("hypergrad") is not None:
            return None  # (a hypergradient run's LR is the tuner's answer to its report)
        run = self._compose(p)[1]["run"]
        done = last["steps"] if p["whole"] else p["consumed"] + run["steps"]
        if done >= last["steps"]:
            if p["rollbacks"]:  # the inner tuner has not heard of the cuts yet
                return None
            after = self.inner.ask_next()
            return None if after is None else [a for a in after if a["op"] in ("set_lr", "run")]
        rest = rest_of_run(p, done, run.get("collect", ("loss",)))
        return [joined(rest, None if p["rollbacks"] else self.inner.ask_next())]

    def resume(self, step: int) -> None:
        """A trainer restarted from its own checkpoint at ``step``: no guard slot (the next
        plan saves one), the run in flight dropped (the inner tuner resumes there)."""
        self.inner.resume(step)
        self._asked = self._pending = self._owed = None
        self._slot, self._good_step, self._save_due = False, None, False
        self._step = self._base_step = max(0, int(step))
        self._watch.new_window()
        self._watch.tail = []

    def lr_bounds(self) -> tuple[float, float]:
        """The inner tuner's, down to 0: rollbacks cut LRs below anything it would send."""
        return (0.0, self.inner.lr_bounds()[1])

    def summary(self) -> dict:
        out = dict(self.inner.summary())
        out["guard"] = {
            "every": self.every,
            "factor": self.factor,
            "max": self.max_rollbacks,
            "rollbacks": self._rollbacks,
            "strikes": self._strikes,
            "lr_scale": self._scale,
            "steps_rolled_back": self._steps_lost,
            "snapshots": self._snapshots,
            "last_good_step": self._good_step,
            "watching": not self.in_search(),
            "under_way": self._watch.underway,
            "action": copy.deepcopy(self._action),
            "events": copy.deepcopy(self._events),
            "stopped": self._stopped,
        }
        if self._stopped is not None:
            out["stop_reason"] = f"guard: {self._stopped}"
        return out

    def state_dict(self) -> dict:
        state = self.inner.state_dict()
        if "guard" in state:
            raise RuntimeError(f"{self.name}: the tuner's state has a 'guard' key of its own")
        return {
            **state,
            "guard": {
                "version": STATE_VERSION,
                "step": self._step,
                "lr": self._lr,
                "slot": self._slot,
                "good_step": self._good_step,
                "base_step": self._base_step,
                "save_due": self._save_due,
                "pending": copy_progress(self._pending),
                "owed": copy.deepcopy(self._owed),
                **self._watch.state_dict(),
                "strikes": self._strikes,
                "rollbacks": self._rollbacks,
                "snapshots": self._snapshots,
                "steps_lost": self._steps_lost,
                "scale": self._scale,
                "events": copy.deepcopy(self._events),
                "action": copy.deepcopy(self._action),
                "stopped": self._stopped,
            },
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        state = dict(state)
        g = state.pop("guard", None)
        self.inner.load_state_dict(state)
        self._reset()
        if g is None:  # a job saved before the guard: it starts watching from here
            self._step = int(state.get("step", 0) or 0)
            return
        if g.get("version") != STATE_VERSION:
            raise ValueError(f"guard: unsupported state version {g.get('version')!r}")
        self._step, self._lr = int(g["step"]), None if g["lr"] is None else float(g["lr"])
        self._slot, self._good_step, self._save_due = bool(g["slot"]), g["good_step"], bool(g["save_due"])
        self._base_step = int(g["base_step"])
        self._pending, self._owed = copy_progress(g["pending"]), copy.deepcopy(g["owed"])
        self._watch.load_state_dict(g)
        self._strikes, self._rollbacks = int(g["strikes"]), int(g["rollbacks"])
        self._snapshots, self._steps_lost, self._scale = int(g["snapshots"]), int(g["steps_lost"]), float(g["scale"])
        self._events, self._action = copy.deepcopy(g["events"]), copy.deepcopy(g["action"])
        self._stopped = g["stopped"]
