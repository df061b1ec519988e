"""Plan helpers of the divergence guard (:mod:`autolrs.tuners.guard`): the next segment of a
split run and the rest of it, the LRs a plan sets, a copy of a run in flight, its segments merged into one
observation, a run sent ahead joined to the inner tuner's next chunk."""

from __future__ import annotations

import copy
from collections.abc import Iterable

from autolrs import actions
from autolrs.actions import Observation

__all__ = ["copy_progress", "first_lr", "joined", "last_lr", "merged", "next_segment", "rest_of_run"]


def next_segment(p: dict, every: int) -> dict:
    """The next segment of the split inner run in flight ``p``: at most ``every`` steps, ending
    at an evaluation that would otherwise fall across two segments, at the run's LRs times the
    rollbacks' cuts so far."""
    r, c = p["last"], p["consumed"]
    n = min(every, r["steps"] - c)
    eval_every, evals = 0, r.get("eval_every", 0)
    if evals:
        nxt = (c // evals + 1) * evals
        if nxt <= c + n:
            if c % evals == 0 and n >= evals:
                n, eval_every = (n // evals) * evals, evals
            else:
                n = eval_every = nxt - c
    lrs = r.get("lrs")
    if lrs is not None:
        lrs = [lr * p["scale"] for lr in lrs[c : c + n]]
    return actions.run(
        n,
        r["start_step"] + c,
        lrs=lrs,
        eval_every=eval_every,
        collect=tuple(r.get("collect", ("loss",))),
        hypergrad=r.get("hypergrad"),
    )


def rest_of_run(p: dict, done: int, collect: Iterable[str]) -> dict:
    """The inner run in flight ``p`` from its step ``done`` on, unsplit, at the cut LRs."""
    last = p["last"]
    lrs = last.get("lrs")
    every = last.get("eval_every", 0)
    return actions.run(
        last["steps"] - done,
        last["start_step"] + done,
        lrs=None if lrs is None else [lr * p["scale"] for lr in lrs[done:]],
        eval_every=every if every and done % every == 0 else 0,
        collect=tuple(collect),
    )


def copy_progress(progress: dict | None) -> dict | None:
    """A copy of the progress through an inner run that shares nothing editable with it."""
    if progress is None:
        return None
    return {
        **progress,
        "segments": [
            {
                **seg,
                "losses": list(seg["losses"]),
                "evals": [list(e) for e in seg["evals"]],
                "hypergrad": copy.deepcopy(seg["hypergrad"]),
                "probes": [list(x) for x in seg["probes"]],
            }
            for seg in progress["segments"]
        ],
        "rollbacks": [dict(info) for info in progress["rollbacks"]],
    }


def last_lr(plan: list[dict]) -> float | None:
    """The LR the client is at after carrying out ``plan`` (None: the plan sets none)."""
    lr = None
    for action in plan:
        if action["op"] == "set_lr":
            lr = action["lr"]
        elif action["op"] == "run" and action.get("lrs"):
            lr = action["lrs"][-1]
    return lr


def first_lr(plan: list[dict]) -> float | None:
    """The LR the first step of ``plan``'s run trains at (None: not set by the plan)."""
    lr = None
    for action in plan:
        if action["op"] == "set_lr":
            lr = action["lr"]
        elif action["op"] == "run":
            return action["lrs"][0] if action.get("lrs") else lr
    return lr


def joined(rest: dict, after: list[dict] | None) -> dict:
    """``rest`` followed by the inner tuner's next plan as one run, when that plan is one plain
    run of explicit LRs (a schedule's next chunk): a client cut off from the server in the
    middle of a chunk then stays on plan past its end, as it does without the guard."""
    runs = [a for a in after or [] if a["op"] == "run"]
    if (
        len(runs) != 1
        or rest.get("lrs") is None
        or runs[0].get("lrs") is None
        or rest["eval_every"]
        or runs[0]["eval_every"]
        or runs[0].get("hypergrad") is not None
        or runs[0]["start_step"] != rest["start_step"] + rest["steps"]
    ):
        return rest
    return actions.run(
        rest["steps"] + runs[0]["steps"],
        rest["start_step"],
        lrs=rest["lrs"] + runs[0]["lrs"],
        collect=tuple(rest["collect"]),
    )


def merged(p: dict, last: Observation) -> Observation:
    """The one observation of the inner run in flight ``p``: its kept segments, at their
    positions in the run; ``last`` is the observation of its last segment."""
    r = p["last"]
    collect = r.get("collect", ["loss"])
    losses: list[float] = []
    evals: list[tuple[int, float]] = []
    probes: list[tuple[float, float]] = []
    hs: list[float] = []
    tail: dict = {}
    for seg in p["segments"]:
        if "loss" in collect:
            losses += seg["losses"]
        for q, v in seg["evals"]:
            evals.append((0 if q == 0 else seg["at"] + q, v))
        probes += [(a, b) for a, b in seg["probes"]]
        if seg["hypergrad"] is not None:
            hs += seg["hypergrad"].get("h", [])
            tail = seg["hypergrad"]
    hypergrad = None
    if r.get("hypergrad") is not None:
        # The last segment's report (vb, val_loss, the optimizer's family) with every h.
        hypergrad = {**tail, "h": hs}
    return Observation(
        step=last.step, steps=p["consumed"], losses=losses, evals=evals, hypergrad=hypergrad, probes=probes
    )
