"""The vocabulary tuners speak: actions for the client and the observations it reports back.

A *plan* is the ordered list of actions in one reply. The client carries them out in order,
at once, between two optimizer steps; the last action is always ``run`` (train this many steps,
then report) or ``stop``. Restores come before the ``set_lr`` that follows them, so a restored
optimizer never trains a step with the LR it was saved with.

Actions are plain dicts so that they go on the wire unchanged:

=============  ===========================================================================
``set_lr``     ``{"op": "set_lr", "lr": 0.1}``: base LR; param groups keep their initial ratios
``checkpoint`` ``{"op": "checkpoint", "slot": "stage"}``: copy model + optimizer (+ scaler, RNG)
``restore``    ``{"op": "restore", "slot": "stage"}``: load that copy back, bitwise
``discard``    ``{"op": "discard", "slot": "stage"}``: free the copy
``evaluate``   ``{"op": "evaluate"}``: call ``val_fn`` now; reported at segment position 0
``probe``      ``{"op": "probe", "slot": "loss_diff", "lrs": [...]}``: one-step loss changes on one
               subsample (the client's ``probe_fn``: the loss of its current batch): restore
               ``slot``, loss and gradient; then per LR restore ``slot`` and that gradient, set
               the LR, one optimizer step, the loss again; at the end restore ``slot`` and the LR.
               The next report carries ``probes``: ``[loss_before, loss_after]`` per LR, in order
``run``        ``{"op": "run", "steps": 100, "start_step": 1200, "lrs": [...], "eval_every": 0,
               "collect": ["loss"]}``: train ``steps`` steps; ``lrs`` (optional) gives the LR of
               each of them, ``start_step`` the global step the segment starts at (a client that
               is late skips ahead), ``eval_every`` > 0 calls ``val_fn`` every that many steps
``stop``       ``{"op": "stop", "reason": "budget"}``: the tuner is done; ``should_stop`` turns true
=============  ===========================================================================

A ``run`` of a search (AutoLRS trials, range tests, ``auto``'s sweep and trials, ``loss_diff``
probes: steps a later ``restore`` undoes, see :meth:`~autolrs.tuners.base.Tuner.in_search`) also
carries ``"search": true``, which the server adds: a client whose report at the end of such a run
gets no answer must not train on at the run's LR (see the callback's outage rules).

A ``run`` of a hypergradient tuner also carries ``"hypergrad": {"method": "hd" | "tangent",
"mu": 0.9, "vb": false}`` and ``"hypergrad"`` in ``collect``: the client then reports a few
scalars the server's LR rule needs (see :func:`validate_hypergrad` and
:attr:`Observation.hypergrad`); gradient-sized vectors never leave the client.

The report that ends a ``run`` becomes an :class:`Observation` for the tuner's ``tell``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from collections.abc import Sequence
from typing import Any, TypeGuard

OPS = ("set_lr", "checkpoint", "restore", "discard", "evaluate", "probe", "run", "stop")
TERMINAL_OPS = ("run", "stop")
COLLECTABLE = ("loss", "hypergrad")
#: What the client computes for a hypergradient run: ``hd`` (training hypergradient of each
#: step) or ``tangent`` (validation gradient dotted with the LR tangent, at the segment end).
HYPERGRAD_METHODS = ("hd", "tangent")
#: The optimizer whose update the reported hypergradients are of (a report's ``optimizer``):
#: the hyper-LR's scale depends on it.
HYPERGRAD_OPTIMIZERS = ("sgd", "adam")


def set_lr(lr: float) -> dict:
    return {"op": "set_lr", "lr": float(lr)}


def checkpoint(slot: str) -> dict:
    return {"op": "checkpoint", "slot": slot}


def restore(slot: str) -> dict:
    return {"op": "restore", "slot": slot}


def discard(slot: str) -> dict:
    return {"op": "discard", "slot": slot}


def evaluate() -> dict:
    return {"op": "evaluate"}


def probe(slot: str, lrs: list[float]) -> dict:
    return {"op": "probe", "slot": slot, "lrs": [float(lr) for lr in lrs]}


#: The most LRs one ``probe`` action may carry.
MAX_PROBE_LRS = 10_000
#: The most per-step LRs one ``run`` may carry (a message of ~200 kB; a client's report holds
#: as many losses): a tuner sends longer runs in chunks.
MAX_RUN_LRS = 10_000


def run(
    steps: int,
    start_step: int,
    *,
    lrs: list[float] | None = None,
    eval_every: int = 0,
    collect: tuple[str, ...] = ("loss",),
    hypergrad: dict | None = None,
) -> dict:
    action: dict[str, Any] = {
        "op": "run",
        "steps": int(steps),
        "start_step": int(start_step),
        "eval_every": int(eval_every),
        "collect": list(collect),
    }
    if lrs is not None:
        action["lrs"] = [float(lr) for lr in lrs]
    if hypergrad is not None:
        action["hypergrad"] = dict(hypergrad)
    return action


def validate_hypergrad(spec: Any, where: str = "hypergrad") -> dict:
    """Check a run's ``hypergrad`` spec: ``method`` in HYPERGRAD_METHODS, ``mu`` in [0, 1]
    (tangent only: the discount of the tangent's memory), ``vb`` a bool (report the dot
    product of the validation and the last training gradient, for MARTHE's adaptive mu)."""
    if not isinstance(spec, dict) or spec.get("method") not in HYPERGRAD_METHODS:
        raise ValueError(f"{where}: 'method' must be one of {', '.join(HYPERGRAD_METHODS)}")
    mu = spec.get("mu", 0.0)
    if not _is_number(mu) or not 0.0 <= mu <= 1.0:
        raise ValueError(f"{where}: 'mu' must be a number in [0, 1], got {mu!r}")
    if not isinstance(spec.get("vb", False), bool):
        raise ValueError(f"{where}: 'vb' must be true or false")
    return spec


def stop(reason: str) -> dict:
    return {"op": "stop", "reason": reason}


def undo_and_stop(slot: str, lr: float | None, reason: str) -> list[dict]:
    """The end of a measurement that must leave no trace: back to ``slot``'s state, drop it,
    set ``lr`` (if any) and stop."""
    plan = [restore(slot), discard(slot)]
    if lr is not None:
        plan.append(set_lr(lr))
    return plan + [stop(reason)]


def mark_search(plan: list[dict]) -> list[dict]:
    """``plan`` with its ``run`` marked as a search's (``"search": true``; a copy)."""
    return [{**action, "search": True} if action["op"] == "run" else action for action in plan]


def starting_lr(plan: list[dict]) -> float | None:
    """The base LR a client trains at right after carrying out ``plan``'s actions: the first
    LR of its ``run``'s ``lrs``, else its last ``set_lr``; None when it sets none."""
    lr = None
    for action in plan:
        if action["op"] == "set_lr":
            lr = action["lr"]
        elif action["op"] == "run" and action.get("lrs"):
            return action["lrs"][0]
    return lr


def plan_lrs(plan: list[dict]) -> list[float]:
    """Every LR a plan would apply, in order (for bounds checks and logs)."""
    lrs: list[float] = []
    for action in plan:
        if action["op"] == "set_lr":
            lrs.append(action["lr"])
        elif action["op"] in ("run", "probe") and "lrs" in action:
            lrs.extend(action["lrs"])
    return lrs


def validate_plan(plan: Any) -> list[dict]:
    """Check a plan's structure and values; raise ValueError with the first problem found."""
    if not isinstance(plan, list) or not plan:
        raise ValueError("a plan must be a non-empty list of actions")
    for i, action in enumerate(plan):
        if not isinstance(action, dict) or action.get("op") not in OPS:
            raise ValueError(f"action {i}: unknown or missing 'op' in {action!r}")
        op = action["op"]
        if (op in TERMINAL_OPS) != (i == len(plan) - 1):
            raise ValueError(f"action {i}: a plan ends with exactly one 'run' or 'stop'")
        if op == "set_lr":
            _check_lr(action.get("lr"), f"action {i}")
        elif op in ("checkpoint", "restore", "discard"):
            if not isinstance(action.get("slot"), str) or not action["slot"]:
                raise ValueError(f"action {i}: '{op}' needs a non-empty 'slot'")
        elif op == "probe":
            if not isinstance(action.get("slot"), str) or not action["slot"]:
                raise ValueError(f"action {i}: 'probe' needs a non-empty 'slot'")
            lrs = action.get("lrs")
            if not isinstance(lrs, list) or not 1 <= len(lrs) <= MAX_PROBE_LRS:
                raise ValueError(f"action {i}: 'probe' needs 'lrs', a list of 1 to {MAX_PROBE_LRS} LRs")
            for lr in lrs:
                _check_lr(lr, f"action {i}")
        elif op == "run":
            steps = action.get("steps")
            if not _is_int(steps) or steps < 1:
                raise ValueError(f"action {i}: 'run' needs 'steps' >= 1")
            if not _is_int(action.get("start_step")) or action["start_step"] < 0:
                raise ValueError(f"action {i}: 'run' needs 'start_step' >= 0")
            if not _is_int(action.get("eval_every", 0)) or action.get("eval_every", 0) < 0:
                raise ValueError(f"action {i}: 'eval_every' must be an integer >= 0")
            lrs = action.get("lrs")
            if lrs is not None:
                if not isinstance(lrs, list) or len(lrs) != steps:
                    raise ValueError(f"action {i}: 'lrs' must list one LR per step ({steps})")
                if len(lrs) > MAX_RUN_LRS:
                    raise ValueError(f"action {i}: a run carries at most {MAX_RUN_LRS} per-step LRs")
                for lr in lrs:
                    _check_lr(lr, f"action {i}")
            if "hypergrad" in action:
                validate_hypergrad(action["hypergrad"], f"action {i}")
            if not isinstance(action.get("search", False), bool):
                raise ValueError(f"action {i}: 'search' must be true or false")
    return plan


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_lr(lr: Any, where: str) -> None:
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not math.isfinite(lr) or lr < 0:
        raise ValueError(f"{where}: LR {lr!r} is not a finite non-negative number")


@dataclass
class Observation:
    """What the client saw during the segment a ``run`` asked for.

    ``step`` is the client's global step count when it reported, ``steps`` how many steps the
    segment had, ``losses`` the training loss of each (NaN and inf allowed: they mean
    divergence), ``evals`` the ``[position in segment, value]`` pairs of ``val_fn`` results.
    ``hypergrad`` (hypergradient runs only, else None): ``{"h": [...], "vb": x, "val_loss": x}``
    and, from clients that say, ``"optimizer": "sgd" | "adam"``,
    ``h`` the hypergradients dE/dLR the client computed in order (one per step for ``hd``, one
    at the segment end for ``tangent``; non-finite values allowed), ``vb`` and ``val_loss``
    numbers or None. ``probes``: the ``[loss_before, loss_after]`` pairs of the plan's ``probe``
    actions, one per LR in order (empty when it had none or the client could not probe).
    """

    step: int
    steps: int = 0
    losses: list[float] = field(default_factory=list)
    evals: Sequence[Sequence[float]] = field(default_factory=list)  # [position, value] pairs
    hypergrad: dict | None = None
    probes: Sequence[Sequence[float]] = field(default_factory=list)  # [loss_before, loss_after] pairs

    @classmethod
    def from_body(cls, body: dict) -> "Observation":
        """Build from a report body; raise ValueError on wrong types (NaN values are fine)."""
        step = body.get("step")
        if not _is_int(step) or step < 0:
            raise ValueError("report needs an integer 'step' >= 0")
        steps = body.get("steps", 0)
        if not _is_int(steps) or steps < 0:
            raise ValueError("'steps' must be an integer >= 0")
        losses = body.get("losses", [])
        if not isinstance(losses, list) or not all(_is_number(x) for x in losses):
            raise ValueError("'losses' must be a list of numbers")
        evals = body.get("evals", [])
        if not isinstance(evals, list) or not all(
            isinstance(e, list) and len(e) == 2 and _is_int(e[0]) and _is_number(e[1]) for e in evals
        ):
            raise ValueError("'evals' must be a list of [position, value] pairs")
        probes = body.get("probes", [])
        if not isinstance(probes, list) or not all(
            isinstance(p, list) and len(p) == 2 and _is_number(p[0]) and _is_number(p[1]) for p in probes
        ):
            raise ValueError("'probes' must be a list of [loss_before, loss_after] pairs")
        return cls(
            step=step,
            steps=steps,
            losses=[float(x) for x in losses],
            evals=[(int(p), float(v)) for p, v in evals],
            hypergrad=_parse_hypergrad(body.get("hypergrad")),
            probes=[(float(a), float(b)) for a, b in probes],
        )

    def to_body(self) -> dict:
        body = {
            "step": self.step,
            "steps": self.steps,
            "losses": list(self.losses),
            "evals": [[p, v] for p, v in self.evals],
        }
        if self.hypergrad is not None:
            body["hypergrad"] = dict(self.hypergrad)
        if self.probes:  # absent when empty: reports without probes stay as they were
            body["probes"] = [[a, b] for a, b in self.probes]
        return body


def _parse_hypergrad(value: Any) -> dict | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError("'hypergrad' must be an object")
    h = value.get("h", [])
    if not isinstance(h, list) or not all(_is_number(x) for x in h):
        raise ValueError("'hypergrad.h' must be a list of numbers")
    out: dict[str, Any] = {"h": [float(x) for x in h]}
    for key in ("vb", "val_loss"):
        x = value.get(key)
        if x is not None and not _is_number(x):
            raise ValueError(f"'hypergrad.{key}' must be a number or null")
        out[key] = None if x is None else float(x)
    optimizer = value.get("optimizer")
    if optimizer is not None:
        if optimizer not in HYPERGRAD_OPTIMIZERS:
            raise ValueError(f"'hypergrad.optimizer' must be one of {HYPERGRAD_OPTIMIZERS} or null")
        out["optimizer"] = optimizer
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
