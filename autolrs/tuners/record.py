"""``record``: the server keeps the log of a run whose LRs the client sets itself.

Alrao (:mod:`autolrs.optim`) gives every unit its own LR inside the training process, and a
user with a hand-written schedule may only want the run logged next to tuned ones. This tuner
never sends an LR: each plan is ``run(chunk)`` collecting the training losses (and, with
``eval_every``, validation losses), so every report lands in the job's ``decisions.jsonl`` with
its summary (mean, last, non-finite count), and ``summary()`` keeps the run's trace: the mean
training loss of each segment and every validation value, at their global steps. It stops at
the job's ``max_steps`` when known, else runs until the client says goodbye.

``lr_min``/``lr_max`` (optional) record the interval the client's LRs come from, e.g. the Alrao
interval, with ``interval_source`` saying how it was chosen; they are not used otherwise.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from autolrs import actions
from autolrs.actions import Observation
from autolrs.tuners.base import MAX_CHUNK, MAX_STEPS, ConfigError, Tuner, require_int, require_positive

#: Segment means and evaluations kept in the state (the oldest are dropped beyond this; the
#: job log keeps every report).
TRACE_LIMIT = 10_000


class RecordTuner(Tuner):
    """Log the run; change nothing."""

    name = "record"
    knobs = {
        "chunk": (500, "steps per report"),
        "eval_every": (0, "call val_fn every this many steps (0: never)"),
        "lr_min": (None, "lower end of the interval the client's own LRs come from (recorded only)"),
        "lr_max": (None, "upper end of that interval (recorded only)"),
        "interval_source": (None, "how that interval was chosen (free text, recorded only)"),
    }
    limits = {"chunk": MAX_CHUNK, "eval_every": MAX_STEPS}

    def __init__(self, config: Mapping[str, Any] | None = None, seed: int = 0):
        super().__init__(config, seed)
        c = self.config
        self.chunk = require_int(c, "chunk", minimum=1)
        self.eval_every = require_int(c, "eval_every", minimum=0)
        if self.eval_every and not c["has_val_fn"]:
            raise ConfigError("record: eval_every needs a val_fn in the callback")
        bounds = [c[k] for k in ("lr_min", "lr_max")]
        if any(b is not None for b in bounds):
            lo, hi = (require_positive(b, k) for b, k in zip(bounds, ("lr_min", "lr_max")))
            if not lo < hi:
                raise ConfigError(f"record: lr_min ({lo}) must be below lr_max ({hi})")
        if c["interval_source"] is not None and not isinstance(c["interval_source"], str):
            raise ConfigError("record: interval_source must be a string")
        self.step = 0
        self.trace: dict[str, list] = {"loss": [], "val": []}  # [global step, value] pairs

    def _steps_left(self) -> int | None:
        max_steps = self.config["max_steps"]
        return None if max_steps is None else max_steps - self.step

    def ask(self) -> list[dict]:
        left = self._steps_left()
        if left is not None and left <= 0:
            return [actions.stop("max_steps")]
        n = self.chunk if left is None else min(self.chunk, left)
        return [actions.run(n, self.step, eval_every=self.eval_every)]

    def tell(self, observation: Observation) -> None:
        start = self.step
        self.step = max(self.step, int(observation.step))
        finite = [x for x in observation.losses if math.isfinite(x)]
        if observation.losses:
            mean = sum(finite) / len(finite) if len(finite) == len(observation.losses) else math.nan
            self._keep("loss", [self.step, mean])
        for position, value in observation.evals:
            self._keep("val", [start + int(position), float(value)])

    def _keep(self, key: str, point: list) -> None:
        trace = self.trace[key]
        trace.append(point)
        del trace[:-TRACE_LIMIT]

    def lr_bounds(self) -> tuple[float, float]:
        """No LR is ever sent; the recorded interval (or the initial LR) for listings."""
        c = self.config
        if c["lr_min"] is not None:
            return float(c["lr_min"]), float(c["lr_max"])
        lr = c["initial_lr"] if c["initial_lr"] is not None else 0.0
        return float(lr), float(lr)

    def state_dict(self) -> dict:
        return {"step": self.step, "trace": {k: [list(p) for p in v] for k, v in self.trace.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step = int(state["step"])
        self.trace = {k: [[int(p[0]), float(p[1])] for p in state["trace"][k]] for k in ("loss", "val")}

    def summary(self) -> dict:
        c = self.config
        last_loss = self.trace["loss"][-1][1] if self.trace["loss"] else None
        vals = [v for _, v in self.trace["val"] if math.isfinite(v)]
        return {
            "step": self.step,
            "lr_min": c["lr_min"],
            "lr_max": c["lr_max"],
            "interval_source": c["interval_source"],
            "last_mean_loss": last_loss,
            "best_val": min(vals) if vals else None,
            "trace": {k: list(v) for k, v in self.trace.items()},
        }
