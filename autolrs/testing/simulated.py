"""A simulated training client for exercising tuners without torch or sockets.

``SimulatedClient`` carries out plans the way the real callback does (actions in order,
``run`` segments with per-step LRs and periodic evaluations, checkpoint slots) against a
synthetic loss model, and turns each segment into the :class:`~autolrs.actions.Observation`
the tuner is told. The default model has a known best LR, so tests can check a tuner finds it.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from autolrs import actions
from autolrs.actions import Observation


class QuadraticBowl:
    """Loss that shrinks geometrically at a rate peaking at ``best_lr`` and blows up past
    ``diverge_lr``: ``L <- L * (1 - rate * q(lr))`` with ``q(r) = 2r / (1 + r^2)``, r = lr/best_lr."""

    def __init__(
        self, best_lr: float = 0.1, rate: float = 0.01, floor: float = 0.1, diverge_lr: float = 5.0, noise: float = 0.01
    ):
        self.best_lr, self.rate, self.floor = best_lr, rate, floor
        self.diverge_lr, self.noise = diverge_lr, noise

    def initial(self) -> float:
        return 2.0

    def step(self, state: float, lr: float) -> float:
        if lr >= self.diverge_lr or not math.isfinite(state):
            return math.inf
        r = lr / self.best_lr
        return state * (1 - self.rate * 2 * r / (1 + r * r))

    def loss(self, state: float, rng: np.random.Generator) -> float:
        return self.floor + state + self.noise * float(rng.standard_normal())

    def val_loss(self, state: float) -> float:
        return self.floor + 0.05 + state

    def lr_hypergradient(self, state: float, lr: float) -> float:
        """d(loss after one step from ``state``)/d(lr): negative below ``best_lr``, positive
        above, so a hypergradient tuner should move the LR towards ``best_lr``."""
        if lr >= self.diverge_lr or not math.isfinite(state):
            return math.nan
        r = lr / self.best_lr
        return -state * self.rate * 2 * (1 - r * r) / (1 + r * r) ** 2 / self.best_lr


class SimulatedClient:
    """Runs a tuner's plans against ``model`` until it says stop or ``max_reports`` is reached."""

    def __init__(
        self,
        model: QuadraticBowl | None = None,
        seed: int = 0,
        initial_lr: float = 0.1,
        corrupt: Callable[[int, float], float] | None = None,
    ):
        self.model = model or QuadraticBowl()
        self.rng = np.random.default_rng(seed)
        self.state = self.model.initial()
        self.lr = initial_lr
        self.step = 0
        self.slots: dict[str, float] = {}
        self.stopped = False
        self.plans: list[list[dict]] = []
        self.lr_history: list[float] = []
        # corrupt(step, loss) -> reported loss: lets tests inject NaN/inf observations.
        self.corrupt = corrupt

    def execute(self, plan: list[dict]) -> Observation | None:
        """Carry out one plan; return the observation of its ``run`` (None after ``stop``)."""
        actions.validate_plan(plan)
        self.plans.append(plan)
        evals: list[tuple[int, float]] = []
        probes: list[tuple[float, float]] = []
        for action in plan:
            op = action["op"]
            if op == "set_lr":
                self.lr = action["lr"]
            elif op == "checkpoint":
                self.slots[action["slot"]] = self.state
            elif op == "restore":
                self.state = self.slots[action["slot"]]
            elif op == "discard":
                self.slots.pop(action["slot"], None)
            elif op == "evaluate":
                evals.append((0, self.model.val_loss(self.state)))
            elif op == "probe":
                probes.extend(self._probe(action))
            elif op == "stop":
                self.stopped = True
                return None
            elif op == "run":
                observation = self._run(action, evals)
                observation.probes = probes
                return observation
        raise AssertionError("validated plans end with run or stop")

    def _run(self, action: dict, evals: list[tuple[int, float]]) -> Observation:
        lrs, every, losses = action.get("lrs"), action.get("eval_every", 0), []
        spec, hs = action.get("hypergrad"), []
        for i in range(action["steps"]):
            if lrs is not None:
                self.lr = lrs[i]
            h = self.model.lr_hypergradient(self.state, self.lr)
            self.state = self.model.step(self.state, self.lr)
            self.step += 1
            self.lr_history.append(self.lr)
            loss = self.model.loss(self.state, self.rng)
            if self.corrupt:
                loss = self.corrupt(self.step, loss)
                if not math.isfinite(loss):  # a diverged step gives a non-finite hypergradient too
                    h = loss
            losses.append(loss)
            if spec is not None and (spec["method"] == "hd" or i == action["steps"] - 1):
                hs.append(h + self.model.noise * float(self.rng.standard_normal()))
            if every and (i + 1) % every == 0:
                evals.append((i + 1, self.model.val_loss(self.state)))
        hypergrad = None
        if spec is not None:
            hypergrad = {"h": hs, "vb": self.model.rate * self.state, "val_loss": self.model.val_loss(self.state)}
        return Observation(step=self.step, steps=action["steps"], losses=losses, evals=evals, hypergrad=hypergrad)

    def _probe(self, action: dict) -> list[tuple[float, float]]:
        """One subsample's loss before and after one step from the slot's state at each LR (the
        subsample's noise is shared, as on one real batch); the state ends on the slot's."""
        start = self.slots.get(action["slot"])
        if start is None:  # like the callback: no checkpoint to probe from, no results
            return []
        before = self.model.loss(start, self.rng)
        out = []
        for lr in action["lrs"]:
            after = before + (self.model.step(start, lr) - start)
            out.append((before, self.corrupt(self.step, after) if self.corrupt else after))
        self.state = start
        return out

    def drive(self, tuner, max_reports: int = 10_000) -> "SimulatedClient":
        """ask/execute/tell until the tuner stops or ``max_reports`` segments have run."""
        for _ in range(max_reports):
            observation = self.execute(tuner.ask())
            if observation is None:
                break
            tuner.tell(observation)
        return self
