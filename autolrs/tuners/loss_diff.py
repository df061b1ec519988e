"""The loss-differential tuner (autolrtuner, Adam Wu): pick the LR from the distribution of
one-step loss changes over a grid of LRs and many subsamples.

The server plans the grid and does the statistics; the client probes. Plans:

1. ``checkpoint`` the state to probe from, then ``run`` one step, so that the client has a
   batch (a subsample) for the first probe;
2. per subsample, ``probe`` (every LR of the grid on the client's current batch, the full
   state, optimizer moments included, restored before each; see :mod:`autolrs.actions`), then
   ``run`` one step to get the next batch; the report of that step carries the probe's
   ``[loss_before, loss_after]`` pairs;
3. when ``num_subsamples`` rows are in: ``restore`` + ``discard`` the checkpoint, ``set_lr``
   the optimizer's initial LR (or the best LR with ``apply_best``) and ``stop``.

So an in-loop job takes ``num_subsamples + 1`` training steps, all undone by the final
restore. A report without probe results (the client lost the checkpoint, say) is retried on
the next batch; after ``MAX_FAILURES`` in a row the tuner gives up and stops the same way.

``summary()`` carries the grid, the deltas (one row per subsample), the per-LR statistics and
every rule's best LR, so the client reads them back with the server's ``status``.
"""

from __future__ import annotations

from typing import Any, Mapping

from autolrs import actions, delta_stats
from autolrs.actions import Observation
from autolrs.tuners.base import ConfigError, Tuner, require_int, require_positive

SLOT = "loss_diff"
#: Consecutive reports without probe results after which the tuner gives up.
MAX_FAILURES = 3


class LossDiffTuner(Tuner):
    """Probe a grid of LRs on many subsamples, summarise the one-step loss changes, stop."""

    name = "loss_diff"
    knobs = {
        "lr_min": (1e-6, "the grid's lowest LR"),
        "lr_max": (1.0, "the grid's highest LR"),
        "num_evals": (30, "LRs in the grid"),
        "spacing": ("log", "grid spacing: log, or linear (autolrtuner's np.linspace)"),
        "num_subsamples": (30, "subsamples (batches) each LR is probed on"),
        "alpha": (0.05, "confidence level 1 - alpha of the t interval of each mean"),
        "method": ("mean", "the rule reported as best_lr (and applied with apply_best): mean, median, variance, max"),
        "apply_best": (False, "after the restore set the best LR instead of the initial one"),
    }
    #: The job's state holds a loss change per subsample and LR, saved after every report: at
    #: most 100 x 100 of them (about 250 kB).
    limits = {"num_evals": 100, "num_subsamples": 100}

    def __init__(self, config: Mapping[str, Any] | None = None, seed: int = 0):
        super().__init__(config, seed)
        c = self.config
        if not c["has_probe_fn"]:
            raise ConfigError(
                "loss_diff: the client cannot probe: pass probe_fn= to AutoLRS (a function "
                "returning the loss of the current batch), or use LossDiffTuner"
            )
        self.initial_lr = None if c["initial_lr"] is None else require_positive(c["initial_lr"], "initial_lr")
        lr_min, lr_max = require_positive(c["lr_min"], "lr_min"), require_positive(c["lr_max"], "lr_max")
        num_evals = require_int(c, "num_evals", minimum=1)
        if c["spacing"] not in delta_stats.SPACINGS:
            raise ConfigError(f"loss_diff: spacing must be one of {delta_stats.SPACINGS}, got {c['spacing']!r}")
        try:
            self.lrs = delta_stats.lr_grid(lr_min, lr_max, num_evals, c["spacing"])
        except ValueError as exc:
            raise ConfigError(f"loss_diff: {exc}") from None
        self.num_subsamples = require_int(c, "num_subsamples", minimum=1)
        alpha = c["alpha"]
        if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0 < alpha < 1:
            raise ConfigError(f"loss_diff: alpha must be in (0, 1), got {alpha!r}")
        self.alpha = float(alpha)
        if c["method"] not in delta_stats.METHODS:
            raise ConfigError(f"loss_diff: method must be one of {delta_stats.METHODS}, got {c['method']!r}")
        self.method = c["method"]
        if not isinstance(c["apply_best"], bool):
            raise ConfigError(f"loss_diff: apply_best must be true or false, got {c['apply_best']!r}")
        self.apply_best = c["apply_best"]
        # One step gets the first batch, one more per subsample: fit them in the job's budget.
        self.target = self.num_subsamples
        if c["max_steps"] is not None:
            if c["max_steps"] < 2:
                raise ConfigError("loss_diff: needs max_steps >= 2 (one step per subsample, plus one)")
            self.target = min(self.num_subsamples, c["max_steps"] - 1)
        self._reset()

    def _reset(self) -> None:
        self.step = 0  # the client's global step
        self.started = False  # the checkpoint is taken and the client has a batch
        self.before: list[float] = []  # each subsample's loss before the step
        self.deltas: list[list[float]] = []  # one row per subsample, one column per LR
        self.failures = 0  # reports in a row without probe results
        self.done: str | None = None  # "completed", "max_steps" or "no_probes"
        self.results: dict | None = None  # statistics and best LRs, once done

    # --- plans --------------------------------------------------------------------------

    def ask(self) -> list[dict]:
        if self.done is not None:
            return actions.undo_and_stop(SLOT, self.final_lr(), f"loss_diff {self.done}")
        run = actions.run(1, self.step, collect=())
        if not self.started:
            return [actions.checkpoint(SLOT), run]
        return [actions.probe(SLOT, self.lrs), run]

    def tell(self, observation: Observation) -> None:
        self.step = max(self.step, int(observation.step))
        if self.done is not None:
            return
        if not self.started:
            self.started = True
        elif len(observation.probes) == len(self.lrs):
            self.failures = 0
            self.before.append(float(observation.probes[0][0]))
            self.deltas.append([delta_stats.delta(b, a) for b, a in observation.probes])
        else:
            self.failures += 1
        if len(self.deltas) >= self.target:
            self.done = "completed" if self.target == self.num_subsamples else "max_steps"
        elif self.failures >= MAX_FAILURES:
            self.done = "no_probes"
        elif self.config["max_steps"] is not None and self.step >= self.config["max_steps"]:
            self.done = "max_steps"
        if self.done is not None:
            self.results = self._results()

    def _results(self) -> dict:
        deltas = delta_stats.as_matrix(self.deltas, len(self.lrs))
        return {"stats": delta_stats.statistics(deltas, self.alpha), "best": delta_stats.best_lrs(self.lrs, deltas)}

    def final_lr(self) -> float | None:
        """The LR set after the restore: the best one (apply_best) or the initial LR."""
        if self.apply_best and self.results is not None:
            lr = self.results["best"][self.method]["lr"]
            if lr is not None:
                return lr
        return self.initial_lr

    # --- contract -----------------------------------------------------------------------

    def in_search(self) -> bool:
        return True  # every probe and step is undone by the final restore

    def lr_bounds(self) -> tuple[float, float]:
        lrs = [self.lrs[0], self.lrs[-1]] + ([self.initial_lr] if self.initial_lr is not None else [])
        return min(lrs), max(lrs)

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "started": self.started,
            "before": list(self.before),
            "deltas": [list(row) for row in self.deltas],
            "failures": self.failures,
            "done": self.done,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._reset()
        self.step = int(state["step"])
        self.started = bool(state["started"])
        self.before = [float(x) for x in state["before"]]
        self.deltas = [[float(x) for x in row] for row in state["deltas"]]
        self.failures = int(state["failures"])
        self.done = state["done"]
        if self.done is not None:
            self.results = self._results()  # derived: recomputed, not stored

    def summary(self) -> dict:
        best = None if self.results is None else self.results["best"][self.method]["lr"]
        return {
            "step": self.step,
            "lr": self.final_lr() if self.done else self.initial_lr,
            "phase": "done" if self.done else "probe",
            "done": self.done,
            "subsamples": len(self.deltas),
            "num_subsamples": self.target,
            "lrs": list(self.lrs),
            "spacing": self.config["spacing"],
            "alpha": self.alpha,
            "method": self.method,
            "best_lr": best,
            "before": list(self.before),
            "deltas": [list(row) for row in self.deltas],
            "stats": None if self.results is None else self.results["stats"],
            "best": None if self.results is None else self.results["best"],
        }
