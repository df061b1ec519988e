"""The LR range test (Leslie Smith; fastai; torch-lr-finder) as a server-side tuner.

The sweep raises the LR from ``start_lr`` to ``end_lr`` over ``num_iter`` optimizer steps, one
LR per step (per ``cb.step`` call, so gradient accumulation and GradScaler-skipped steps do not
move it), with torch-lr-finder's ``exp`` or ``linear`` formula (:func:`autolrs.lr_curve.sweep_lr`).
Each point's loss is the training loss of that step, or with ``val: true`` the validation loss
after it (``eval_every=1``: Leslie Smith's mode, one ``val_fn`` call per step). The server
smooths it and stops on divergence exactly like torch-lr-finder (:class:`autolrs.lr_curve.Smoother`).

Plans: ``checkpoint`` + the first ``chunk`` LRs; then ``chunk`` LRs per report; when the sweep
is over (``num_iter`` points, divergence, or the job's ``max_steps``) ``restore`` + ``discard``
the checkpoint (bitwise: model, optimizer, scaler), ``set_lr`` the optimizer's initial LR (or
the suggestion with ``apply_suggestion``) and ``stop``.

Divergence is seen when a report arrives, i.e. at chunk boundaries: the client trains the rest
of the chunk it holds, so the sweep can go up to ``chunk - 1`` steps past the diverging point
(at LRs above it; the checkpoint is restored afterwards, so only time is lost). Those points are
not recorded. Stopping on the exact step would need a round trip per step; ``chunk: 1`` does
that if wanted.

``summary()`` carries the curve (``history``: ``lr``, ``loss`` raw, ``smoothed``) and, once done,
every suggestion, so a client reads them with the server's ``status`` request.
"""

from __future__ import annotations

from typing import Any, Mapping

from autolrs import actions, lr_curve
from autolrs.actions import Observation
from autolrs.tuners.base import MAX_CHUNK, ConfigError, Tuner, require_int, require_positive

SLOT = "range_test"


class RangeTestTuner(Tuner):
    """Sweep the LR once, record the loss curve, suggest an LR, restore and stop."""

    name = "range_test"
    knobs = {
        "start_lr": (None, "the sweep's first LR; null: the optimizer's (param group 0; the others keep their ratio)"),
        "end_lr": (10.0, "the sweep's last LR"),
        "num_iter": (100, "steps of the sweep"),
        "step_mode": ("exp", "LR spacing: exp (geometric) or linear"),
        "smooth_f": (0.05, "exponential smoothing factor of the loss curve"),
        "diverge_th": (
            5.0,
            "stop once the smoothed loss exceeds this times the best; null: no ratio test "
            "(negative losses); NaN/inf still stop the sweep",
        ),
        "val": (False, "record the validation loss after every step instead of the training loss"),
        "chunk": (10, "LRs per message; divergence is seen at chunk boundaries"),
        "method": (
            lr_curve.DEFAULT_METHOD,
            "the suggestion reported as suggested_lr (and applied): " + ", ".join(lr_curve.METHODS),
        ),
        "apply_suggestion": (False, "after the restore set the suggested LR instead of the initial one"),
        "skip_start": (None, "points the suggestion skips at the start; null: the method's default"),
        "skip_end": (None, "points the suggestion skips at the end; null: the method's default"),
    }
    #: num_iter points of history live in the job's state, saved after every report.
    limits = {"num_iter": 1000, "chunk": MAX_CHUNK, "skip_start": 1000, "skip_end": 1000}

    def __init__(self, config: Mapping[str, Any] | None = None, seed: int = 0):
        super().__init__(config, seed)
        c = self.config
        self.initial_lr = None if c["initial_lr"] is None else require_positive(c["initial_lr"], "initial_lr")
        if c["start_lr"] is None and self.initial_lr is None:
            raise ConfigError("range_test: set 'start_lr' or start the job with an optimizer LR")
        self.start_lr = require_positive(c["start_lr"] if c["start_lr"] is not None else self.initial_lr, "start_lr")
        self.end_lr = require_positive(c["end_lr"], "end_lr")
        self.num_iter = require_int(c, "num_iter", minimum=2)
        self.step_mode = str(c["step_mode"]).lower()
        if self.step_mode not in lr_curve.STEP_MODES:
            raise ConfigError(f"range_test: step_mode must be one of (exp, linear), got {c['step_mode']!r}")
        smooth_f = c["smooth_f"]
        if not isinstance(smooth_f, (int, float)) or isinstance(smooth_f, bool) or not 0 <= smooth_f < 1:
            raise ConfigError(f"range_test: smooth_f must be in [0, 1), got {smooth_f!r}")
        self.smooth_f = float(smooth_f)
        self.diverge_th = None if c["diverge_th"] is None else require_positive(c["diverge_th"], "diverge_th")
        self.val = bool(c["val"])
        if self.val and not c["has_val_fn"]:
            raise ConfigError("range_test: val: true needs a val_fn in the callback")
        self.chunk = require_int(c, "chunk", minimum=1)
        if c["method"] not in lr_curve.METHODS:
            raise ConfigError(f"range_test: method must be one of {lr_curve.METHODS}, got {c['method']!r}")
        self.method = c["method"]
        if not isinstance(c["apply_suggestion"], bool):
            raise ConfigError(f"range_test: apply_suggestion must be true or false, got {c['apply_suggestion']!r}")
        self.apply_suggestion = c["apply_suggestion"]
        self.skips = {k: require_int(c, k) for k in ("skip_start", "skip_end") if c[k] is not None}
        self.total = self.num_iter if c["max_steps"] is None else min(self.num_iter, c["max_steps"])
        self._reset()

    def _reset(self) -> None:
        self.step = 0  # the client's global step
        self.pos = 0  # sweep iterations handed out and reported
        self.history: dict[str, list[float]] = {"lr": [], "loss": [], "smoothed": []}
        self.smoother = lr_curve.Smoother(self.smooth_f, self.diverge_th)
        self.done: str | None = None  # why the sweep ended: "completed", "diverged", "max_steps"
        self.suggestions: dict | None = None

    # --- the sweep ----------------------------------------------------------------------

    def lr_at(self, i: int) -> float:
        return lr_curve.sweep_lr(i, self.start_lr, self.end_lr, self.num_iter, self.step_mode)

    def final_lr(self) -> float | None:
        """The LR set after the restore: the suggestion (apply_suggestion) or the initial LR."""
        if self.apply_suggestion and self.suggestions is not None:
            lr = self.suggestions[self.method]["lr"]
            if lr is not None:
                return lr
        return self.initial_lr

    def ask(self) -> list[dict]:
        if self.done is not None:
            return actions.undo_and_stop(SLOT, self.final_lr(), f"range_test {self.done}")
        n = min(self.chunk, self.total - self.pos)
        lrs = [self.lr_at(self.pos + i) for i in range(n)]
        run = actions.run(n, self.step, lrs=lrs, eval_every=1 if self.val else 0, collect=() if self.val else ("loss",))
        return [actions.checkpoint(SLOT), run] if self.pos == 0 else [run]

    def tell(self, observation: Observation) -> None:
        if self.done is not None:
            self.step = max(self.step, observation.step)
            return
        n = min(self.chunk, self.total - self.pos)
        for i, value in self._points(observation, n):
            smoothed, diverged = self.smoother.add(value)
            self.history["lr"].append(self.lr_at(self.pos + i))
            self.history["loss"].append(value)
            self.history["smoothed"].append(smoothed)
            if diverged:
                self.done = "diverged"
                break
        self.pos += n
        self.step = max(0, int(observation.step))
        if self.done is None and self.pos >= self.total:
            self.done = "completed" if self.pos >= self.num_iter else "max_steps"
        if self.done is not None:
            self.suggestions = self._suggest()

    def _points(self, obs: Observation, n: int) -> list[tuple[int, float]]:
        """(index in the segment, loss) of each recorded step. A client that joined the segment
        late ran only its last ``obs.steps`` steps; reported losses are the segment's last ones."""
        ran = min(n, max(0, obs.steps)) or n
        late = n - ran
        if self.val:
            points = [(late + int(p) - 1, v) for p, v in obs.evals if 1 <= p <= ran]
        else:
            losses = obs.losses[-ran:]
            points = [(n - len(losses) + j, v) for j, v in enumerate(losses)]
        return sorted(points)

    def _suggest(self) -> dict:
        """Every rule on the bias-corrected curve (not torch-lr-finder's ``smoothed``, whose
        start is one batch's loss): see :func:`autolrs.lr_curve.debiased`."""
        lrs, curve = self.history["lr"], lr_curve.debiased(self.history["loss"], self.smooth_f)
        return {m: lr_curve.suggest(lrs, curve, m, **self.skips) for m in lr_curve.METHODS}

    # --- contract -----------------------------------------------------------------------

    def in_search(self) -> bool:
        return True  # the sweep is undone by the final restore; its divergence is its result

    def resume(self, step: int) -> None:
        """A sweep in progress starts again at ``step`` (its start's slot is gone with the
        trainer); a finished one stands."""
        if self.done is None:
            self._reset()
            self.step = max(0, int(step))

    def lr_bounds(self) -> tuple[float, float]:
        lrs = [self.start_lr, self.end_lr] + ([self.initial_lr] if self.initial_lr is not None else [])
        lo, hi = min(lrs), max(lrs)
        if self.apply_suggestion and self.method == "minimum":
            lo /= 10  # the LR at the lowest loss, divided by 10
        return lo, hi

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "pos": self.pos,
            "history": {k: list(v) for k, v in self.history.items()},
            "smoother": self.smoother.state_dict(),
            "done": self.done,
            "suggestions": self.suggestions,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._reset()
        self.step = int(state["step"])
        self.pos = int(state["pos"])
        self.history = {k: [float(x) for x in state["history"][k]] for k in ("lr", "loss", "smoothed")}
        self.smoother.load_state_dict(state["smoother"])
        self.done = state["done"]
        self.suggestions = state["suggestions"]

    def summary(self) -> dict:
        last_lr = self.history["lr"][-1] if self.history["lr"] else None
        suggested = None if self.suggestions is None else self.suggestions[self.method]["lr"]
        return {
            "step": self.step,
            "lr": last_lr,
            "phase": "done" if self.done else "sweep",
            "done": self.done,
            "points": len(self.history["lr"]),
            "num_iter": self.num_iter,
            "best_loss": self.smoother.best,
            "method": self.method,
            "suggested_lr": suggested,
            "suggestions": self.suggestions,
            "history": {k: list(v) for k, v in self.history.items()},
        }
