"""The AutoLRS stage machine's typed records: its settings, a trial, a running stage
(:mod:`autolrs.tuners.autolrs_stages`). Plain data, JSON through :func:`dataclasses.asdict`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Settings:
    """The stage machine's knobs, already checked by the ``autolrs`` tuner."""

    lr_min: float
    lr_max: float
    tau: int
    tau_max: int
    k: int
    trial_fraction: float
    acquisition: str
    kappa: float
    val_points: int
    use_val: bool  # the client has a val_fn and the user wants it used
    val_from_start: bool
    keep_best: bool
    penalty: float
    loss_floor: float | None
    pessimism: float
    tie_break: str
    check_trials: bool
    max_steps: int | None
    start_lr: float  # the LR the job stands at before the first trial


@dataclass
class Trial:
    """One candidate LR of a stage and what its window showed."""

    lr: float
    u: float  # position in the unit log-LR interval
    forecast: float
    std: float = 0.0
    status: str = "ok"
    failed: bool = False
    sigma: float | None = None  # window noise (trial_checks)
    rising: bool = False
    spikes: int = 0


@dataclass
class Stage:
    """The running stage: its plan, its trials so far, and the bookkeeping of slot ``best``."""

    stage: int
    tau: int
    trial_steps: int
    exploit_steps: int
    mode: str  # "train" or "val"
    eval_every: int
    start_step: int
    next_lr: float | None
    trials: list[Trial] = field(default_factory=list)
    best_slot: int | None = None  # trial whose end weights are (or will be) in "best"
    save_best: bool = False  # the next plan starts with checkpoint("best")
    best_saved: bool = False  # slot "best" holds something this stage
    winner: int | None = None  # trial index once the search is over
    gp_theta: list[float] | None = None  # the last GP fit's hyper-parameters (warm start)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, state: Mapping[str, Any]) -> Stage:
        data = dict(state)
        data["trials"] = [Trial(**t) for t in data["trials"]]
        return cls(**data)
