"""One journal entry of a job's history (:mod:`autolrs.server.history`), built from one applied
report alone, and the bounds that keep a history small whatever the job's length.

The bounds (the downsampling rule):

* **series**: one point per bucket of ``w`` consecutive steps, ``w`` the smallest power of two
  with ``ceil(last_step / w) <= SERIES_POINTS`` (1,024). A point holds its bucket's last step,
  the LR of that step, the mean of the bucket's finite losses and how many finite and
  non-finite losses it had. Every step is kept while the job is under 1,024 steps; each time
  its length doubles past that, neighbouring buckets merge (exact weighted means).
* **evals** (validation losses) and **hypergradients**: the same rule with 512 buckets.
* **AutoLRS stages**: the record of each stage (its trials' LRs, forecasts and statuses, the
  winner), the last MAX_STAGES (1,000); each trial's loss window (AutoLRS's and ``auto``'s),
  reduced to at most WINDOW_POINTS (32) means of equal slices, for the last WINDOW_STAGES (16)
  stages.
* **sweep**: the (LR, loss) points of the range test behind AutoLRS's automatic bounds or
  ``auto``'s first phase, the first MAX_SWEEP (2,000) (the tuners drop that curve once they
  have used it).

Numbers are kept to 7 significant digits (ample for a chart, half the bytes of full floats).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

__all__ = [
    "CONTEXT_KEYS",
    "EVAL_POINTS",
    "MAX_STAGES",
    "MAX_SWEEP",
    "SERIES_POINTS",
    "SWEEP_PHASES",
    "TRIAL_PHASES",
    "WINDOW_POINTS",
    "WINDOW_STAGES",
    "bucket_width",
    "column_at",
    "finite",
    "make_entry",
    "plan_lrs",
    "round7",
]

SERIES_POINTS = 1024
EVAL_POINTS = 512
WINDOW_POINTS = 32
WINDOW_STAGES = 16
MAX_STAGES = 1000
MAX_SWEEP = 2000
#: Summary keys copied into an entry's context (which phase, stage and trial a segment was).
CONTEXT_KEYS = ("phase", "stage", "trial", "mode")
#: Phases whose segments are trials (AutoLRS's ``trial``, ``auto``'s ``trials``): their loss
#: windows are kept; and phases that sweep the LR (AutoLRS's automatic bounds, ``auto``'s
#: range test): their (LR, loss) points are kept.
TRIAL_PHASES = ("trial", "trials")
SWEEP_PHASES = ("bounds", "sweep")


def bucket_width(last_step: int, points: int) -> int:
    """The smallest power of two ``w`` with ``ceil(last_step / w) <= points``."""
    w = 1
    while (max(last_step, 1) - 1) // w + 1 > points:
        w *= 2
    return w


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def round7(x: Any) -> float | None:
    """``x`` to 7 significant digits; None when it is not a finite number."""
    return float(f"{x:.7g}") if finite(x) else None


def _column(values: list) -> Any:
    """A column as one value when every entry is equal (a constant LR, full buckets), else the list."""
    return values[0] if values and all(v == values[0] for v in values) else values


def column_at(column: Any, i: int) -> Any:
    return column[i] if isinstance(column, list) else column


def plan_lrs(plan: Sequence[Mapping] | None) -> tuple[list[float] | None, float | None]:
    """(per-step LRs of the plan's run, the last set_lr before it) of the plan a report answers."""
    per_step, constant = None, None
    for action in plan or ():
        if not isinstance(action, Mapping):
            continue
        if action.get("op") == "set_lr":
            constant = action.get("lr")
        elif action.get("op") == "run" and isinstance(action.get("lrs"), list):
            per_step = action["lrs"]
    return per_step, constant


def make_entry(
    plan: Sequence[Mapping] | None,
    step: int,
    steps: int,
    losses: Sequence[float],
    evals: Sequence[Sequence[float]],
    hypergrad: Mapping | None,
    reported_lr: Any,
    before: Mapping | None,
    after: Mapping | None,
) -> dict:
    """The journal entry of one applied report.

    ``plan`` is the plan the client carried out (the reply before the report), ``step`` the
    client's global step at the report, ``steps`` the segment's length, ``losses`` the last
    losses of the segment (one per step, aligned to its end), ``evals`` ``[position, value]``
    pairs, ``before``/``after`` the tuner's summary before and after the report.
    """
    end = int(step)
    start = max(0, end - max(int(steps), len(losses)))
    per_step, constant = plan_lrs(plan)
    fallback = constant if finite(constant) else (reported_lr if finite(reported_lr) else None)

    def lr_at(t: int) -> float | None:  # LR of global step t (1-based) of this segment
        if per_step:
            i = len(per_step) - 1 - (end - t)
            if 0 <= i < len(per_step):
                return per_step[i]
        return fallback

    loss_steps = [end - len(losses) + 1 + j for j in range(len(losses))]
    entry: dict[str, Any] = {"s": start, "e": end, **_series_points(start, end, loss_steps, losses, lr_at)}
    if losses:
        entry["last"] = [end, round7(losses[-1])]
    if evals:
        entry["ev"] = [[start + int(p), round7(v)] for p, v in evals]
    hs = list((hypergrad or {}).get("h") or [])
    if hs:  # one per step (hd), aligned to the end, or one at the end (tangent methods)
        entry["h"] = {"t": end - len(hs) + 1, "v": [round7(h) for h in hs]}
    before = before or {}
    ctx = {k: before[k] for k in CONTEXT_KEYS if isinstance(before.get(k), (str, int, float))}
    if ctx:
        entry["ctx"] = ctx
    if ctx.get("phase") in TRIAL_PHASES:
        # AutoLRS numbers its stages and trials; ``auto`` has one round of trials, counted.
        stage, trial = before.get("stage", 0), before.get("trial", len(before.get("trials") or ()))
        # A trial's LR: the one set for it, else the first of its per-step LRs (an annealed trial's peak).
        lr = constant if finite(constant) else (per_step[0] if per_step else fallback)
        entry["win"] = _trial_window({**ctx, "stage": stage, "trial": trial}, end - start, losses, evals, lr)
    if ctx.get("phase") in SWEEP_PHASES and losses:
        pairs = [(lr_at(t), v) for t, v in zip(loss_steps, losses) if lr_at(t) is not None][:MAX_SWEEP]
        entry["sweep"] = {"lr": [round7(lr) for lr, _ in pairs], "loss": [round7(v) for _, v in pairs]}
    stage = (after or {}).get("last_stage")
    if isinstance(stage, Mapping) and stage.get("stage") != (before.get("last_stage") or {}).get("stage"):
        entry["stage"] = dict(stage)
    return entry


def _series_points(start: int, end: int, loss_steps: list[int], losses: Sequence[float], lr_at) -> dict:
    """The segment's buckets at the width of its end step, as columns: ``w`` the width, ``b`` the
    first bucket (the rest follow, one per bucket up to the end step), ``lr`` the LR of each
    bucket's last step, ``m`` the mean of its finite losses (None without), ``n`` and ``x`` how
    many finite and non-finite losses it had. Columns that are constant are one value."""
    w = bucket_width(end, SERIES_POINTS)
    first, last = (max(start + 1, 1) - 1) // w, (max(end, 1) - 1) // w
    sums = [0.0] * (last - first + 1)
    counts = [0] * len(sums)
    bad = [0] * len(sums)
    for t, v in zip(loss_steps, losses):
        i = (max(t, 1) - 1) // w - first
        if finite(v):
            sums[i] += v
            counts[i] += 1
        else:
            bad[i] += 1
    lrs = [round7(lr_at(min(end, (first + i + 1) * w))) for i in range(len(sums))]
    return {
        "w": w,
        "b": first,
        "lr": _column(lrs),
        "m": [round7(t / n) if n else None for t, n in zip(sums, counts)],
        "n": _column(counts),
        "x": _column(bad),
    }


def _trial_window(
    ctx: Mapping, steps: int, losses: Sequence[float], evals: Sequence[Sequence[float]], lr: float | None
) -> dict:
    """An AutoLRS trial's loss window: positions are steps since the trial started (what the
    forecaster fits; validation losses in validation mode), at most WINDOW_POINTS means."""
    if ctx.get("mode") == "val" and any(p > 0 for p, _ in evals):
        pts = [(float(p), v) for p, v in evals if p > 0]
        kind = "val"
    else:
        pts = [(float(steps - len(losses) + j), v) for j, v in enumerate(losses)]
        kind = "train"
    points = _reduce(pts, WINDOW_POINTS)
    return {
        "stage": ctx["stage"],
        "trial": ctx["trial"],
        "lr": lr,
        "kind": kind,
        "points": [[round7(p), round7(v)] for p, v in points],
    }


def _reduce(points: Sequence[tuple[float, float]], limit: int) -> list[tuple]:
    """At most ``limit`` points: the mean position and mean finite value of equal slices
    (a slice holding only non-finite values gives None: divergence shows as a gap)."""
    n = len(points)
    if n <= limit:
        return [(p, v if finite(v) else None) for p, v in points]
    out = []
    for i in range(limit):
        chunk = points[i * n // limit : (i + 1) * n // limit]
        vals = [v for _, v in chunk if finite(v)]
        out.append((sum(p for p, _ in chunk) / len(chunk), sum(vals) / len(vals) if vals else None))
    return out
