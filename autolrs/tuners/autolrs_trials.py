"""How the AutoLRS stage machine (:mod:`autolrs.tuners.autolrs_stages`) judges a stage's trials.

* A trial's record (:func:`trial_record`): its training losses (or validation losses) are
  forecast ``tau`` steps ahead (:mod:`autolrs.forecast`); the forecast, its standard deviation
  and the window's health (:mod:`autolrs.trial_checks`) are kept. A window that holds NaN/inf
  (or nothing) gets the numeric ``penalty`` and ranks after every finite one (the original
  stored the string "nan" and crashed at ``min``).
* Trials are compared on their pessimistic forecast (:func:`score`): the forecast plus
  ``pessimism`` standard deviations.
* The winner (:func:`pick_winner`) is chosen among the trials that may win (finite, and healthy
  by :mod:`autolrs.trial_checks`): the lowest score, or with ``tie_break: lowest`` the lowest
  LR the forecasts cannot tell from it.
"""

from __future__ import annotations

import math

from autolrs import trial_checks
from autolrs.actions import Observation
from autolrs.forecast import fit_forecast
from autolrs.tuners.autolrs_records import Settings, Stage, Trial

__all__ = ["may_be_best", "pick_winner", "score", "trial_record", "unfit_reasons"]


def trial_record(obs: Observation, stage: Stage, s: Settings) -> dict:
    """A trial's record from its report: forecast, its uncertainty, status, window health."""
    losses = list(obs.losses)
    evals = [(p, v) for p, v in obs.evals if p > 0]
    if stage.mode == "val" and evals:
        if any(not math.isfinite(v) for v in losses):
            return {"forecast": s.penalty, "std": 0.0, "status": "nonfinite", "failed": True}
        by_pos = {int(p): float(v) for p, v in evals}
        pos = sorted(by_pos)
        window = [by_pos[p] for p in pos]
        fit = fit_forecast(
            window,
            stage.exploit_steps / stage.eval_every,
            "val",
            x=[p / stage.eval_every for p in pos],
            penalty=s.penalty,
            floor=s.loss_floor,
        )
    else:
        window = losses
        fit = fit_forecast(window, stage.exploit_steps, "train", penalty=s.penalty, floor=s.loss_floor)
    record = {
        "forecast": float(fit.value),
        "std": float(fit.std) if math.isfinite(fit.std) else 0.0,
        "status": fit.status,
        "failed": fit.failed,
    }
    if not fit.failed:
        health = trial_checks.window_health(window)
        record.update(
            sigma=health.sigma if math.isfinite(health.sigma) else None, rising=health.rising_tail, spikes=health.spikes
        )
    return record


def score(trial: Trial, s: Settings) -> float:
    """What trials are compared on: the forecast plus ``pessimism`` standard deviations."""
    return trial.forecast + s.pessimism * trial.std


def may_be_best(trial: Trial, s: Settings) -> bool:
    """Whether ``trial``'s end weights may be kept as the stage's best (``keep_best``): finite,
    and with ``check_trials`` neither rising at its end nor spiking."""
    unhealthy = s.check_trials and (trial.rising or trial.spikes >= trial_checks.MIN_SPIKES)
    return not trial.failed and not unhealthy


def unfit_reasons(trials: list[Trial], s: Settings) -> list[list[str]]:
    """Why each trial may not win (empty: it may); every finite trial may without checks."""
    if not s.check_trials:
        return [["failed"] if t.failed else [] for t in trials]
    healths = [
        None if t.failed else trial_checks.WindowHealth(t.rising, t.spikes, math.nan if t.sigma is None else t.sigma)
        for t in trials
    ]
    return trial_checks.unstable_reasons(healths)


def pick_winner(trials: list[Trial], s: Settings) -> int:
    """Among trials that may win, the lowest score; with ``tie_break: lowest`` the lowest LR
    among those whose optimistic forecast (forecast - pessimism * std) reaches that score.
    With no healthy trial, the lowest finite LR; with no finite one, the lowest LR."""
    reasons = unfit_reasons(trials, s)
    finite = [i for i, t in enumerate(trials) if not t.failed]
    if not finite:
        return min(range(len(trials)), key=lambda i: (trials[i].lr, i))
    pool = [i for i in finite if not reasons[i]]
    if not pool:
        return min(finite, key=lambda i: (trials[i].lr, i))
    best = min(pool, key=lambda i: (score(trials[i], s), i))
    if s.tie_break == "best":
        return best
    bar = score(trials[best], s)
    tied = [i for i in pool if trials[i].forecast - s.pessimism * trials[i].std <= bar]
    return min(tied, key=lambda i: (trials[i].lr, i))
