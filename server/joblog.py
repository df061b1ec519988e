"""The server log's line per job event: a job starts (or resumes), the tuner decides after a
report, the job ends. One readable line each, at INFO, beside the decision log (which keeps
every detail as JSON)."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

__all__ = ["describe_plan", "job_line"]


def job_line(
    kind: str, job_id: str, step: int, plan: Sequence[Mapping[str, Any]] | None, record: Mapping[str, Any]
) -> str:
    """The log line of one applied request; ``record`` is what the decision log got besides."""
    if kind == "hello":
        if record.get("resumed"):
            head = f"job {job_id} resumed at step {record.get('client_step', step)}"
        else:
            again = " (replacing its finished session)" if record.get("replaced_finished") else ""
            max_steps = (record.get("config") or {}).get("max_steps")
            budget = f" of {max_steps}" if max_steps is not None else ""
            head = f"job {job_id} started{again}: tuner {record.get('tuner')} at step {step}{budget}"
        return f"{head}; plan: {describe_plan(plan)}"
    if kind == "report":
        return f"job {job_id} step {step}: {_observed(record.get('observation') or {})}; plan: {describe_plan(plan)}"
    if kind == "goodbye":
        return f"job {job_id} ended ({record.get('reason', '')}) at step {step}"
    return f"job {job_id} {kind} at step {step}"


def describe_plan(plan: Sequence[Mapping[str, Any]] | None) -> str:
    """``restore 'best', set LR 0.01, run 20 steps`` (a run's own LRs as first -> last)."""
    if not plan:
        return "nothing"
    return ", ".join(_action(a) for a in plan)


def _action(action: Mapping[str, Any]) -> str:
    op = action.get("op")
    if op == "set_lr":
        return f"set LR {_lr(action.get('lr'))}"
    if op in ("checkpoint", "restore", "discard"):
        return f"{op} {action.get('slot')!r}"
    if op == "probe":
        return f"probe {len(action.get('lrs') or [])} LRs from {action.get('slot')!r}"
    if op == "stop":
        return f"stop ({action.get('reason', '')})"
    if op == "run":
        text = f"run {action.get('steps')} steps"
        lrs = action.get("lrs")
        if lrs:
            text += (
                f" at LR {_lr(lrs[0])}"
                if len(lrs) == 1 or lrs[0] == lrs[-1]
                else f", LR {_lr(lrs[0])} -> {_lr(lrs[-1])}"
            )
        if action.get("eval_every"):
            text += f", evaluating every {action['eval_every']}"
        if action.get("hypergrad"):
            text += f", hypergradient {action['hypergrad'].get('method')}"
        return text
    return str(op)


def _observed(observation: Mapping[str, Any]) -> str:
    n, mean = observation.get("n_losses", 0), observation.get("mean_loss")
    if isinstance(mean, (int, float)):
        text = f"mean loss {mean:.4g} over {n} steps"
    else:
        text = f"{n} losses, none finite" if n else "no losses"
    evals = [e[1] for e in observation.get("evals") or [] if len(e) > 1 and isinstance(e[1], (int, float))]
    if evals:
        text += f", validation {evals[-1]:.4g}"
    return text


def _lr(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) and math.isfinite(value) else str(value)
