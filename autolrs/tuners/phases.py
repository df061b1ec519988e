"""Pieces any tuner can be wrapped in, in the spirit of torch's ``SequentialLR`` and
``ChainedScheduler``: a phase before the tuner, and an annealed end after it.

* :class:`Sequence` runs one tuner until it says ``stop``, then a second one that the first's
  result builds (a range test, then a tuner searching the interval it found), for the rest of
  the job. The second counts its steps from 0 with what is left of the budget as its
  ``max_steps``, so it neither knows nor cares what ran before it; its plans and the client's
  reports are translated by the offset. Everything the first's closing plan does before its
  ``stop`` (the range test's restore, say) leads the second's first plan.
* :class:`LinearWarmup` is such a first phase: a linear ramp of the LR to a target over a
  number of steps.
* :func:`warmup_cosine` and :func:`annealed_lr` are the schedules these and the ``auto``
  tuner share.
* :class:`FinalAnneal` wraps a tuner and anneals the run that ends the job (a ``set_lr`` then
  a ``run`` that reaches ``max_steps``) from that LR to 0, cosine or linear, sending the LRs in
  chunks and telling the tuner the one observation it expects.

Each is a :class:`~autolrs.tuners.base.Tuner` with a JSON ``state_dict`` that contains the
wrapped tuners' states, so a restarted server resumes exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from autolrs import actions
from autolrs.actions import Observation
from autolrs.tuners.base import Tuner

CHUNK = 1000  # per-step LRs per message
ANNEALS = ("cosine", "linear")


def annealed_lr(lr: float, i: int, n: int, kind: str) -> float:
    """The LR of step ``i`` of an ``n``-step run annealed from ``lr`` towards 0: cosine as
    ``torch.optim.lr_scheduler.CosineAnnealingLR`` with ``T_max = n``, or linear."""
    if kind == "cosine":
        return lr * (1 + math.cos(math.pi * i / n)) / 2
    return lr * (1 - i / n)


def warmup_cosine(peak: float, i: int, n: int, warmup: int) -> float:
    """LR of step ``i`` of an ``n``-step run: a linear ramp to ``peak`` over ``warmup`` steps,
    then cosine from ``peak`` to 0 at step ``n`` (``CosineAnnealingLR`` with ``T_max = n - warmup``)."""
    if i < warmup:
        return peak * (i + 1) / warmup
    span = max(1, n - warmup)
    return peak * (1 + math.cos(math.pi * min(i - warmup, span) / span)) / 2


def _shift_plan(plan: list[dict], offset: int) -> list[dict]:
    return [dict(a, start_step=a["start_step"] + offset) if a["op"] == "run" else a for a in plan]


def _shift_observation(obs: Observation, offset: int) -> Observation:
    return Observation(
        step=obs.step - offset,
        steps=obs.steps,
        losses=obs.losses,
        evals=obs.evals,
        hypergrad=obs.hypergrad,
        probes=obs.probes,
    )


class _Wrapper(Tuner):
    """What the pieces share: no config of their own (the job's facts come from the parts)."""

    def __init__(self, config: Mapping[str, Any], seed: int):  # noqa: D107 - not Tuner.__init__
        self.config = dict(config)
        self.seed = int(seed)
        self.notices = []


class Sequence(_Wrapper):
    """``first`` until it says stop, then ``then(first, step)`` (see the module doc)."""

    name = "sequence"

    def __init__(self, first: Tuner, then: Callable[[Tuner, int], Tuner], bounds: tuple[float, float]):
        super().__init__(first.config, first.seed)
        self.first, self.then = first, then
        self.bounds = bounds  # every LR either part may send (the second is not built yet)
        self.second: Tuner | None = None
        self.offset = 0
        self.carry: list[dict] = []  # the first's closing actions, for the second's first plan

    @property
    def active(self) -> Tuner:
        return self.first if self.second is None else self.second

    def ask(self) -> list[dict]:
        if self.second is None:
            return self.first.ask()
        return [dict(a) for a in self.carry] + _shift_plan(self.second.ask(), self.offset)

    def tell(self, observation: Observation) -> None:
        if self.second is None:
            self.first.tell(observation)
            closing = self.first.ask()
            if closing[-1]["op"] == "stop":
                self._switch(closing[:-1], max(0, int(observation.step)))
            return
        self.carry = []
        self.second.tell(_shift_observation(observation, self.offset))

    def _switch(self, carry: list[dict], step: int) -> Tuner:
        self.carry, self.offset = carry, step
        self.second = self.then(self.first, step)
        return self.second

    def in_search(self) -> bool:
        return self.active.in_search()

    def resume(self, step: int) -> None:
        """A restarted trainer at ``step``: the part that ran there goes on (a checkpoint from
        before the switch takes the job back to the first part). The first's closing actions
        that touch its slots are dropped: the trainer no longer has them."""
        if self.second is not None and step < self.offset:
            self.second, self.carry, self.offset = None, [], 0
        if self.second is None:
            self.first.resume(step)
            closing = self.first.ask()
            if closing[-1]["op"] == "stop":
                self._switch([a for a in closing[:-1] if a["op"] == "set_lr"], step)
            return
        self.carry = [a for a in self.carry if a["op"] == "set_lr"]
        self.second.resume(step - self.offset)

    def on_rollback(self, factor: float, info: Mapping[str, Any]) -> None:
        self.active.on_rollback(factor, info)

    def lr_bounds(self) -> tuple[float, float]:
        return self.bounds

    def state_dict(self) -> dict:
        return {
            "first": self.first.state_dict(),
            "switched": self.second is not None,
            "offset": self.offset,
            "carry": [dict(a) for a in self.carry],
            "second": None if self.second is None else self.second.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.first.load_state_dict(state["first"])
        self.second = None
        if state["switched"]:
            self._switch([dict(a) for a in state["carry"]], int(state["offset"])).load_state_dict(state["second"])

    def summary(self) -> dict:
        return self.active.summary()


class LinearWarmup(_Wrapper):
    """A linear ramp ``lr_i = lr * (i + 1) / steps`` over ``steps`` steps (LRs in chunks), then stop."""

    name = "warmup"

    def __init__(self, steps: int, lr: float, config: Mapping[str, Any], seed: int = 0):
        super().__init__(config, seed)
        self.steps, self.lr = int(steps), float(lr)
        self.done = 0
        self.step = 0

    def _chunk(self) -> int:
        return min(CHUNK, self.steps - self.done)

    def ask(self) -> list[dict]:
        n = self._chunk()
        if n <= 0:
            return [actions.stop("warm-up done")]
        lrs = [self.lr / self.steps * (i + 1) for i in range(self.done, self.done + n)]
        return [actions.run(n, self.step, lrs=lrs, collect=())]

    def tell(self, observation: Observation) -> None:
        self.done += max(0, self._chunk())
        self.step = max(0, int(observation.step))

    def on_rollback(self, factor: float, info: Mapping[str, Any]) -> None:
        self.lr *= factor  # the rest of the ramp, to the cut target

    def resume(self, step: int) -> None:
        """The ramp goes on at ``step`` (its own steps count from 0)."""
        self.step = max(0, int(step))
        self.done = min(self.steps, self.step)

    def lr_bounds(self) -> tuple[float, float]:
        return (self.lr / self.steps, self.lr)

    def state_dict(self) -> dict:
        return {"done": self.done, "step": self.step, "lr": self.lr}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.done, self.step = int(state["done"]), int(state["step"])
        self.lr = float(state.get("lr", self.lr))

    def summary(self) -> dict:
        return {"phase": "warmup", "warmup_done": self.done, "lr": self.lr / self.steps * max(1, self.done)}


class FinalAnneal(_Wrapper):
    """``inner``, with its run that ends the job annealed to 0 (see the module doc).

    The run is recognised in the inner tuner's plan: a ``run`` without per-step LRs that
    reaches ``max_steps``, at the LR of the plan's last ``set_lr`` (or the LR the client is at).
    """

    name = "final_anneal"

    def __init__(self, inner: Tuner, kind: str, max_steps: int):
        super().__init__(inner.config, inner.seed)
        self.inner, self.kind, self.max_steps = inner, kind, int(max_steps)
        self.anneal: dict | None = None  # {"lr", "n", "done", "losses", "evals"} while annealing
        self.step = 0
        self.lr: float | None = None  # the client's LR, as the plans set it

    def _final_run(self) -> tuple[list[dict], float, int] | None:
        """(the plan's other actions, the LR, steps) when the inner tuner's plan ends the job."""
        plan = self.inner.ask()
        last = plan[-1]
        if last["op"] != "run" or "lrs" in last or self.step + last["steps"] < self.max_steps:
            return None
        lr = self.lr
        for action in plan[:-1]:
            if action["op"] == "set_lr":
                lr = action["lr"]
        if lr is None:
            return None
        return [a for a in plan[:-1] if a["op"] != "set_lr"], lr, last["steps"]

    def _chunk_run(self, a: dict, extra: dict) -> dict:
        n = min(CHUNK, a["n"] - a["done"])
        lrs = [annealed_lr(a["lr"], i, a["n"], self.kind) for i in range(a["done"], a["done"] + n)]
        return actions.run(n, self.step, lrs=lrs, **extra)

    def ask(self) -> list[dict]:
        if self.anneal is not None:
            return [self._chunk_run(self.anneal, self.anneal["extra"])]
        final = self._final_run()
        if final is None:
            return self.inner.ask()
        prefix, lr, n = final
        last = self.inner.ask()[-1]
        extra = {"eval_every": last.get("eval_every", 0), "collect": tuple(last.get("collect", ("loss",)))}
        return prefix + [self._chunk_run({"lr": lr, "n": n, "done": 0}, extra)]

    def tell(self, observation: Observation) -> None:
        if self.anneal is None:
            final = self._final_run()
            if final is None:
                self._track(self.inner.ask())
                self.step = max(0, int(observation.step))
                self.inner.tell(observation)
                return
            _, lr, n = final
            last = self.inner.ask()[-1]
            self.anneal = {
                "lr": lr,
                "n": n,
                "done": 0,
                "start": self.step,
                "losses": [],
                "evals": [],
                "extra": {"eval_every": last.get("eval_every", 0), "collect": list(last.get("collect", ("loss",)))},
            }
        a = self.anneal
        a["losses"] += list(observation.losses)
        a["evals"] += [[a["done"] + int(p), v] for p, v in observation.evals]
        a["done"] += min(CHUNK, a["n"] - a["done"])
        self.step = max(0, int(observation.step))
        self.lr = annealed_lr(a["lr"], a["done"] - 1, a["n"], self.kind)
        if a["done"] >= a["n"] or self.step >= self.max_steps:
            merged = Observation(
                step=self.step, steps=a["done"], losses=a["losses"], evals=[(p, v) for p, v in a["evals"]]
            )
            self.anneal = None
            self.inner.tell(merged)

    def _track(self, plan: list[dict]) -> None:
        for action in plan:
            if action["op"] == "set_lr":
                self.lr = action["lr"]
            elif action["op"] == "run" and action.get("lrs"):
                self.lr = action["lrs"][-1]

    def in_search(self) -> bool:
        return self.anneal is None and self.inner.in_search()

    def resume(self, step: int) -> None:
        """The annealed run goes on at ``step`` (at that step's LR); before it, the inner tuner
        resumes there."""
        a = self.anneal
        if a is not None and step >= a.get("start", self.step - a["done"]):
            a["done"] = min(a["n"], step - a.get("start", self.step - a["done"]))
            a["evals"] = [[p, v] for p, v in a["evals"] if p <= a["done"]]
            self.step = step
            if a["done"]:
                self.lr = annealed_lr(a["lr"], a["done"] - 1, a["n"], self.kind)
            if a["done"] >= a["n"]:
                self.anneal = None
                self.inner.tell(
                    Observation(step=step, steps=a["done"], losses=a["losses"], evals=[(p, v) for p, v in a["evals"]])
                )
            return
        self.anneal = None
        self.step = max(0, int(step))
        self.inner.resume(self.step)

    def on_rollback(self, factor: float, info: Mapping[str, Any]) -> None:
        if self.anneal is not None:
            self.anneal["lr"] *= factor  # the rest of the annealed run, from the cut LR
        self.inner.on_rollback(factor, info)

    def lr_bounds(self) -> tuple[float, float]:
        return (0.0, self.inner.lr_bounds()[1])

    def state_dict(self) -> dict:
        return {
            "inner": self.inner.state_dict(),
            "anneal": None if self.anneal is None else dict(self.anneal),
            "step": self.step,
            "lr": self.lr,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.inner.load_state_dict(state["inner"])
        self.anneal = None if state["anneal"] is None else dict(state["anneal"])
        self.step = int(state["step"])
        self.lr = None if state["lr"] is None else float(state["lr"])

    def summary(self) -> dict:
        out = dict(self.inner.summary())
        if self.anneal is not None:
            out.update(phase="final anneal", lr=self.lr, annealed=self.anneal["done"], anneal_steps=self.anneal["n"])
        return out
