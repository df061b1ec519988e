"""The AutoLRS stage machine, driven by synthetic clients: exact plans, budget, recovery."""

import math

import numpy as np
import pytest

from autolrs import actions
from autolrs.wire import protocol
from autolrs.actions import Observation
from autolrs.testing import QuadraticBowl, SimulatedClient
from autolrs.tuners import ConfigError
from autolrs.tuners import make_tuner as make_guarded_tuner
from autolrs.tuners.autolrs_tuner import AutoLRSTuner


def make_tuner(name, config=None, seed=0):
    """The tuner alone: these tests are about its stage machine (tests/core_tests/test_guard.py
    has the divergence guard's)."""
    return make_guarded_tuner(name, {"guard": False, **(config or {})}, seed=seed)

# The stage machine as published (preset "paper"); the default decision rules have tests of their own.
BASE = {"min_lr": 1e-3, "max_lr": 1.0, "tau": 100, "tau_max": 400, "k": 3, "preset": "paper"}


def build(seed=0, **config):
    return make_tuner("autolrs", {**BASE, **config}, seed=seed)


class FlatClient:
    """Reports flat loss curves whose level is ``value(lr, trial_index)``: the forecast of a
    flat window is exactly that level, so tests control what the tuner sees."""

    def __init__(self, value=lambda lr, i: (math.log10(lr) + 1.0) ** 2 + 1.0):
        self.value = value
        self.step = 0
        self.lr = None
        self.plans = []
        self.trial = 0  # index of the run within its stage
        self.stopped = False

    def execute(self, plan):
        actions.validate_plan(plan)
        self.plans.append(plan)
        for a in plan:
            if a["op"] == "set_lr":
                self.lr = a["lr"]
            elif a["op"] == "checkpoint" and a["slot"] == "stage":
                self.trial = 0
            elif a["op"] == "stop":
                self.stopped = True
                return None
            elif a["op"] == "run":
                n, every = a["steps"], a["eval_every"]
                lrs = a.get("lrs")
                level = self.value(lrs[-1] if lrs else self.lr, self.trial)
                self.trial += 1
                self.step += n
                evals = [(every * (j + 1), level) for j in range(n // every)] if every else []
                return Observation(step=self.step, steps=n, losses=[level] * n, evals=evals)

    def drive(self, tuner, max_reports=1000):
        for _ in range(max_reports):
            obs = self.execute(tuner.ask())
            if obs is None:
                break
            tuner.tell(obs)
        return self


def shape(plan):
    """A plan without its LRs: ops, slots, run lengths and evaluation periods."""
    out = []
    for a in plan:
        if a["op"] == "run":
            out.append(("run", a["steps"], a["eval_every"]))
        elif a["op"] in ("checkpoint", "restore", "discard"):
            out.append((a["op"], a["slot"]))
        else:
            out.append((a["op"],))
    return out


def stage_shapes(trial, exploit, k=3, every=0):
    first = [("checkpoint", "stage"), ("set_lr",), ("run", trial, every)]
    later = [("restore", "stage"), ("set_lr",), ("run", trial, every)]
    return [first] + [later] * (k - 1) + [[("restore", "stage"), ("set_lr",), ("run", exploit, 0)]]


def test_stage_sequence_tau_doubling_and_validation_switch():
    tuner = build(has_val_fn=True)
    client = FlatClient().drive(tuner, max_reports=20)
    expected = (stage_shapes(10, 100) + stage_shapes(20, 200) + stage_shapes(40, 400)
                # tau reached tau_max: validation mode, 16 evaluations per 40-step trial -> every 2
                + stage_shapes(40, 400, every=2) + stage_shapes(40, 400, every=2))
    assert [shape(p) for p in client.plans] == expected
    assert [s["mode"] for s in tuner.stages] == ["train", "train", "train", "val", "val"]
    assert [(s["tau"], s["trial_steps"]) for s in tuner.stages] == [(100, 10), (200, 20), (400, 40), (400, 40), (400, 40)]


@pytest.mark.parametrize("config", [{"has_val_fn": False}, {"has_val_fn": True, "use_val": False}])
def test_stays_on_training_loss_without_validation(config):
    tuner = build(**config)
    client = FlatClient().drive(tuner, max_reports=16)
    assert [shape(p) for p in client.plans] == (stage_shapes(10, 100) + stage_shapes(20, 200)
                                                 + stage_shapes(40, 400) * 2)
    assert all(s["mode"] == "train" for s in tuner.stages)


def test_lr_applied_with_restore_and_winner_is_best_forecast():
    tuner = build(k=4)
    client = FlatClient().drive(tuner, max_reports=15)
    for plan in client.plans:
        ops = [a["op"] for a in plan]
        if "restore" in ops or "checkpoint" in ops:
            # The LR is set in the same plan, after the restore/checkpoint, before the run.
            assert ops.index("set_lr") > max(i for i, op in enumerate(ops) if op in ("restore", "checkpoint"))
            assert ops[-1] == "run" and ops[-2] == "set_lr"
    for stage, start in zip(tuner.stages, range(0, 15, 5)):
        trial_lrs = [client.plans[start + i][-2]["lr"] for i in range(4)]
        assert trial_lrs == [t["lr"] for t in stage["trials"]]
        assert len(set(trial_lrs)) == 4  # never the same LR twice in a stage
        forecasts = [t["forecast"] for t in stage["trials"]]
        assert forecasts == [pytest.approx((math.log10(lr) + 1) ** 2 + 1) for lr in trial_lrs]
        best = trial_lrs[forecasts.index(min(forecasts))]
        assert stage["winner"] == best
        assert client.plans[start + 4][-2] == actions.set_lr(best)
        assert client.plans[start + 4][-1]["collect"] == []  # exploitation collects nothing


def test_finds_the_synthetic_optimum():
    # Loss level (log10(lr) + 1)^2: best LR 0.1; ten candidates per stage, pure exploration.
    tuner = build(k=10, tau=50, tau_max=50)
    FlatClient().drive(tuner, max_reports=22)
    for stage in tuner.stages:
        assert abs(math.log10(stage["winner"]) + 1.0) < 0.2
    # And with an exploiting acquisition.
    for acquisition, kappa in [("lcb", 2.0), ("ei", 1e6)]:
        tuner = build(k=8, tau=50, tau_max=50, acquisition=acquisition, kappa=kappa)
        FlatClient().drive(tuner, max_reports=9)
        assert abs(math.log10(tuner.stages[0]["winner"]) + 1.0) < 0.2


def test_finds_the_optimum_of_a_simulated_training_run():
    # The simulated model's loss decays fastest at lr = best_lr = 0.1 (noisy training losses).
    # Later stages, where every LR has reached the floor, carry no signal and are not checked.
    tuner = build(k=8, tau=200, tau_max=400, max_steps=1800)  # stages of 360, 720, 720 steps
    client = SimulatedClient(QuadraticBowl(best_lr=0.1, rate=0.002, noise=0.01), seed=0).drive(tuner)
    assert client.stopped and client.step == 1800
    winners = [s["winner"] for s in tuner.stages]
    assert len(winners) == 3 and all(0.03 < w < 0.3 for w in winners), winners


def test_keep_best_trial_checkpoints_the_best_end_weights():
    forecasts = {0: 3.0, 1: 2.0, 2: 4.0}  # trial 1 is best and not last
    tuner = build(keep_best_trial=True)
    client = FlatClient(value=lambda lr, i: forecasts.get(i, 1.0)).drive(tuner, max_reports=4)
    assert [shape(p) for p in client.plans] == [
        [("checkpoint", "stage"), ("set_lr",), ("run", 10, 0)],
        # each trial that is the best so far has its end weights kept before rolling back
        [("checkpoint", "best"), ("restore", "stage"), ("set_lr",), ("run", 10, 0)],
        [("checkpoint", "best"), ("restore", "stage"), ("set_lr",), ("run", 10, 0)],
        [("restore", "best"), ("discard", "best"), ("set_lr",), ("run", 100, 0)],
    ]
    assert client.plans[3][2]["lr"] == client.plans[1][-2]["lr"]


def test_keep_best_trial_when_the_last_trial_wins():
    forecasts = {0: 3.0, 1: 4.0, 2: 2.0}
    tuner = build(keep_best_trial=True)
    client = FlatClient(value=lambda lr, i: forecasts.get(i, 1.0)).drive(tuner, max_reports=4)
    assert [shape(p) for p in client.plans] == [
        [("checkpoint", "stage"), ("set_lr",), ("run", 10, 0)],
        [("checkpoint", "best"), ("restore", "stage"), ("set_lr",), ("run", 10, 0)],
        [("restore", "stage"), ("set_lr",), ("run", 10, 0)],
        # the winner's weights are the current ones: continue in place, free the older copy
        [("discard", "best"), ("set_lr",), ("run", 100, 0)],
    ]
    assert client.plans[3][1]["lr"] == client.plans[2][-2]["lr"]


def test_warmup_is_a_linear_ramp_before_stage_one():
    tuner = build(warmup_steps=2500, warmup_lr=0.1, initial_lr=0.05)
    client = FlatClient().drive(tuner, max_reports=4)
    ramps = client.plans[:3]
    assert [shape(p) for p in ramps] == [[("run", 1000, 0)], [("run", 1000, 0)], [("run", 500, 0)]]
    lrs = [lr for p in ramps for lr in p[0]["lrs"]]
    assert lrs == [0.1 / 2500 * (i + 1) for i in range(2500)]
    assert [p[0]["start_step"] for p in ramps] == [0, 1000, 2000]
    assert shape(client.plans[3])[0] == ("checkpoint", "stage")
    assert client.plans[3][2]["start_step"] == 2500
    lo, hi = tuner.lr_bounds()
    assert lo == 0.1 / 2500 and hi == 1.0
    assert tuner.summary()["warmup_steps"] == 2500


def run_lengths(client):
    return [p[-1]["steps"] for p in client.plans if p[-1]["op"] == "run"]


def test_budget_stretches_the_last_stage_to_end_exactly():
    # Stage costs 3*10+100=130, 3*20+200=260, 3*40+400=520; 1000-130-260=610 leaves 90 after
    # stage 3, less than a first stage: stage 3's exploitation takes it (400+90).
    tuner = build(max_steps=1000)
    client = FlatClient().drive(tuner)
    assert client.stopped and client.step == 1000
    assert client.plans[-1] == [actions.stop("max_steps")]
    assert [s["exploit_steps"] for s in tuner.stages] == [100, 200, 490]
    assert sum(run_lengths(client)) == 1000
    summary = tuner.summary()
    assert summary["search_steps"] == 3 * (10 + 20 + 40)
    assert summary["train_steps"] == 100 + 200 + 490
    assert summary["phase"] == "done"
    assert summary["overhead"] == pytest.approx(210 / 1000)


def test_budget_shrinks_a_stage_that_does_not_fit():
    # Defaults (tau 1000, k 10, tau' 100) cost 2000 per first stage; 500 steps fit tau=250.
    tuner = make_tuner("autolrs", {"max_steps": 500, "initial_lr": 0.1}, seed=1)
    client = FlatClient().drive(tuner)
    assert [shape(p)[-1] for p in client.plans[:-1]] == [("run", 25, 0)] * 10 + [("run", 250, 0)]
    assert client.step == 500 and client.stopped


def test_budget_too_small_to_search_trains_at_the_current_lr():
    tuner = make_tuner("autolrs", {"max_steps": 7, "initial_lr": 0.05, "final_decay": "none"}, seed=1)
    client = FlatClient().drive(tuner)
    assert client.plans == [[actions.set_lr(0.05), actions.run(7, 0, collect=())], [actions.stop("max_steps")]]
    # By default that last run anneals, like every run that ends a job.
    annealed = FlatClient().drive(make_tuner("autolrs", {"max_steps": 7, "initial_lr": 0.05}, seed=1))
    first = annealed.plans[0][-1]
    assert first["lrs"][0] == 0.05 and first["lrs"] == sorted(first["lrs"], reverse=True) and first["steps"] == 7


def test_budget_with_warmup_counts_the_warmup():
    tuner = build(max_steps=400, warmup_steps=100, warmup_lr=0.01)
    client = FlatClient().drive(tuner)
    assert client.step == 400 and client.stopped
    # 300 left after warm-up: stage 1 (130) leaves 170 >= 130, stage 2 (260) does not fit and
    # shrinks to tau=131 (tau' = 13, cost 3*13+131 = 170): exactly the budget.
    assert run_lengths(client) == [100] + [10] * 3 + [100] + [13] * 3 + [131]


def test_non_finite_losses_are_penalised_not_chosen():
    # Large LRs diverge (NaN losses); inf for one LR band.
    def value(lr, i):
        if lr > 0.3:
            return math.nan
        if 0.01 < lr < 0.02:
            return math.inf
        return (math.log10(lr) + 1.0) ** 2 + 1.0

    tuner = build(k=10, tau=50, tau_max=50, loss_penalty=1e5)
    FlatClient(value).drive(tuner, max_reports=22)
    for stage in tuner.stages:
        failed = [t for t in stage["trials"] if t["status"] == "nonfinite"]
        assert failed, "the exploration reaches the diverging LRs"
        assert all(t["forecast"] == 1e5 for t in failed)
        assert stage["winner"] <= 0.3 and not stage["all_failed"]
    assert protocol.loads(protocol.dumps(tuner.state_dict())) == tuner.state_dict()


def test_all_trials_diverging_picks_the_smallest_lr():
    tuner = build(k=4)
    client = FlatClient(lambda lr, i: math.nan).drive(tuner, max_reports=5)
    stage = tuner.stages[0]
    assert stage["all_failed"]
    assert stage["winner"] == min(t["lr"] for t in stage["trials"])
    assert client.plans[4][-2] == actions.set_lr(stage["winner"])


def test_validation_forecast_uses_evaluations():
    # Validation losses (flat at the level) decide in validation mode, not training losses.
    tuner = build(has_val_fn=True, tau=40, tau_max=40, k=3, val_points=4)

    class Client(FlatClient):
        def execute(self, plan):
            obs = super().execute(plan)
            if obs is not None and obs.evals:
                obs.losses = [5.0] * obs.steps  # training loss says nothing
            return obs

    client = Client().drive(tuner, max_reports=8)
    val_stage = tuner.stages[1]
    assert val_stage["mode"] == "val" and val_stage["eval_every"] == 1
    assert [p[-1]["eval_every"] for p in client.plans[4:7]] == [1, 1, 1]
    for t in val_stage["trials"]:
        assert t["forecast"] == pytest.approx((math.log10(t["lr"]) + 1) ** 2 + 1)


ROUND_TRIP = {"has_val_fn": True, "keep_best_trial": True, "warmup_steps": 30, "warmup_lr": 0.05,
              "max_steps": 1200, "acquisition": "ei", "tau": 60, "tau_max": 120}


def round_trip_client():
    return SimulatedClient(QuadraticBowl(rate=0.003, noise=0.02), seed=11)


@pytest.fixture(scope="module")
def reference_run():
    tuner = build(seed=4, **ROUND_TRIP)
    client = round_trip_client().drive(tuner)
    assert client.stopped
    return client.plans, tuner.summary()


@pytest.mark.parametrize("split", [1, 2, 4, 5, 8, 11, 12, 29, 33])
def test_state_dict_round_trip_continues_identically(split, reference_run):
    # Report 1 is the warm-up, 2-5 stage 1 (4 trials then exploitation), 6-9 stage 2, from 10
    # on validation mode with keep_best_trial slots in flight; 33 is the last before the stop.
    plans, summary = reference_run
    tuner = build(seed=4, **ROUND_TRIP)
    client = round_trip_client()
    client.drive(tuner, max_reports=split)
    state = protocol.loads(protocol.dumps(tuner.state_dict()))
    resumed = build(seed=4, **ROUND_TRIP)
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state
    assert resumed.ask() == tuner.ask()
    client.drive(resumed)
    assert client.plans == plans
    assert resumed.summary() == summary


def test_seed_changes_the_first_candidate_only_through_the_seed():
    a = [build(seed=s).ask()[1]["lr"] for s in (1, 1, 2)]
    assert a[0] == a[1] != a[2]


def test_summary_reports_the_search():
    tuner = build(k=3)
    FlatClient().drive(tuner, max_reports=2)
    s = tuner.summary()
    assert s["stage"] == 1 and s["phase"] == "trial" and s["trial"] == 2 and s["k"] == 3
    assert len(s["trials"]) == 2 and s["search_steps"] == 20 and s["train_steps"] == 0
    FlatClient().drive(tuner, max_reports=2)
    s = tuner.summary()
    assert s["stage"] == 2 and s["last_stage"]["stage"] == 1
    assert s["last_stage"]["winner"] == tuner.stages[0]["winner"]
    assert {"lr", "step", "overhead", "mode", "tau"} <= set(s)


def test_defaults_and_derived_bounds():
    tuner = make_tuner("autolrs", {"initial_lr": 0.1})
    assert tuner.lr_bounds() == (pytest.approx(1e-3), pytest.approx(1.0))
    assert isinstance(tuner, AutoLRSTuner)
    assert make_tuner("autolrs", {}).lr_bounds() == (1e-3, 1.0)
    plan = tuner.ask()
    assert shape(plan) == [("checkpoint", "stage"), ("set_lr",), ("run", 100, 0)]


@pytest.mark.parametrize("bad", [
    {"min_lr": 0.1, "max_lr": 0.1},
    {"min_lr": -1},
    {"tau": 100, "tau_max": 50},
    {"k": 0},
    {"trial_fraction": 1.5},
    {"acquisition": "ucb"},
    {"kappa": -1},
    {"keep_best_trial": "yes"},
    {"val_points": 0},
    {"loss_penalty": math.inf},
])
def test_bad_config_is_a_clear_error(bad):
    with pytest.raises(ConfigError):
        build(**bad)


def test_numeric_strings_from_yaml_are_accepted():
    tuner = build(min_lr="1e-4", max_lr="1e-1")
    assert tuner.lr_bounds() == (1e-4, 0.1)


def test_client_jumping_ahead_gets_truncated_runs_and_a_stop():
    tuner = build(max_steps=300)
    plan = tuner.ask()
    assert plan[-1]["steps"] == 10
    # The client reports far more progress than asked (it trained on while waiting, say).
    tuner.tell(Observation(step=295, steps=10, losses=[1.0] * 10))
    plan = tuner.ask()
    assert plan[-1]["op"] == "run" and plan[-1]["steps"] == 5 and plan[-1]["start_step"] == 295
    tuner.tell(Observation(step=300, steps=5, losses=[1.0] * 5))
    assert tuner.ask() == [actions.stop("max_steps")]


def test_initial_lr_of_zero_is_treated_as_unknown():
    assert make_tuner("autolrs", {"initial_lr": 0.0}).lr_bounds() == (1e-3, 1.0)
    with pytest.raises(ConfigError, match="set both"):
        make_tuner("autolrs", {"initial_lr": 1e-4, "min_lr": 0.01})


# --- automatic bounds from a range test -------------------------------------------------

AUTO = {"min_lr": "auto", "max_lr": "auto", "auto_start_lr": 1e-5, "auto_end_lr": 10.0,
        "auto_num_iter": 50, "tau": 40, "tau_max": 160, "k": 3}


def test_auto_bounds_run_a_range_test_first_and_use_its_curve():
    from autolrs import lr_curve
    from autolrs.tuners.range_test import SLOT

    tuner = make_tuner("autolrs", {**AUTO, "initial_lr": 0.1, "max_steps": 800}, seed=0)
    assert tuner.summary()["bounds_source"].startswith("auto")
    client = SimulatedClient(QuadraticBowl(best_lr=0.1, diverge_lr=3.0), seed=0)
    # The sweep: a checkpoint, then exponentially spaced LRs from auto_start_lr.
    plan = tuner.ask()
    assert plan[0] == actions.checkpoint(SLOT)
    assert plan[-1]["lrs"][0] == pytest.approx(1e-5)
    while tuner.phase == "bounds":
        tuner.tell(client.execute(tuner.ask()))
    history = tuner.range_test.history
    expected = lr_curve.bounds_from_curve(history["lr"], history["loss"], below_minimum=3.0)
    assert tuner.interval == pytest.approx(expected)
    at_minimum = lr_curve.bounds_from_curve(history["lr"], history["loss"])[1]
    assert tuner.interval[1] == pytest.approx(at_minimum / 3)  # safely below the loss minimum
    assert tuner.interval[0] < 0.1 < tuner.interval[1] < 3.0  # the optimum inside, divergence outside
    # The first stage starts from the weights the sweep started from, with the LR in the new interval.
    plan = tuner.ask()
    # The range test's closing actions lead the stage's first plan (its set_lr is overridden).
    assert shape(plan)[:4] == [("restore", SLOT), ("discard", SLOT), ("set_lr",), ("checkpoint", "stage")]
    assert tuner.interval[0] <= plan[4]["lr"] <= tuner.interval[1]
    assert tuner.bounds_steps == len(history["lr"]) or tuner.range_test.done == "diverged"
    client.drive(tuner)
    s = tuner.summary()
    assert client.step == 800 and s["bounds_source"].startswith("range test")
    assert all(tuner.interval[0] <= t["lr"] <= tuner.interval[1] for st in tuner.stages for t in st["trials"])
    assert s["bounds_steps"] > 0 and s["overhead"] > 0


def test_auto_bounds_keep_a_bound_given_as_a_number():
    tuner = make_tuner("autolrs", {**AUTO, "max_lr": 0.5, "initial_lr": 0.1, "max_steps": 600}, seed=0)
    SimulatedClient(QuadraticBowl(best_lr=0.1, diverge_lr=3.0), seed=0).drive(tuner)
    assert tuner.interval[1] == 0.5 and tuner.interval[0] < 0.5
    assert tuner.summary()["bounds_source"].startswith("range test")


def test_auto_bounds_fall_back_to_defaults_when_the_loss_never_falls():
    tuner = make_tuner("autolrs", {**AUTO, "initial_lr": 0.1, "max_steps": 400}, seed=0)
    client = FlatClient(value=lambda lr, i: 1.0 + lr)  # the loss only rises with the LR
    client.drive(tuner)
    assert tuner.interval == (pytest.approx(1e-3), pytest.approx(1.0))
    assert tuner.summary()["bounds_source"].startswith("defaults: the loss never fell")
    assert client.stopped and client.step == 400


def test_auto_bounds_state_round_trips_mid_sweep():
    config = {**AUTO, "initial_lr": 0.1, "max_steps": 600}
    tuner = make_tuner("autolrs", config, seed=3)
    client = SimulatedClient(seed=1)
    for _ in range(2):
        tuner.tell(client.execute(tuner.ask()))
    assert tuner.phase == "bounds"
    resumed = make_tuner("autolrs", config, seed=3)
    resumed.load_state_dict(protocol.loads(protocol.dumps(tuner.state_dict())))
    while tuner.phase != "done":
        plan = tuner.ask()
        assert resumed.ask() == plan
        obs = client.execute(plan)
        if obs is None:
            break
        tuner.tell(obs)
        resumed.tell(obs)
    assert resumed.state_dict() == tuner.state_dict()


def test_auto_bounds_bad_sweep_config_is_a_clear_error():
    with pytest.raises(ConfigError, match="auto_start_lr"):
        make_tuner("autolrs", {**AUTO, "auto_start_lr": 1.0, "auto_end_lr": 0.1})
    with pytest.raises(ConfigError, match="lr_min"):
        make_tuner("autolrs", {**AUTO, "min_lr": "automatic"})


# --- annealing the last stage -----------------------------------------------------------

@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_final_decay_anneals_only_the_run_that_ends_the_job(kind):
    import torch

    tuner = build(max_steps=2500, final_decay=kind)
    client = FlatClient().drive(tuner)
    assert client.stopped and client.step == 2500
    runs = [p[-1] for p in client.plans if p[-1]["op"] == "run"]
    annealed = [r for r in runs if "lrs" in r]
    assert annealed and all(r["steps"] <= 1000 for r in annealed)  # the LRs travel in chunks
    lrs = [lr for r in annealed for lr in r["lrs"]]
    last = tuner.stages[-1]
    assert len(lrs) == last["exploit_steps"] and annealed[-1]["start_step"] + annealed[-1]["steps"] == 2500
    if kind == "cosine":  # the same LRs as torch's CosineAnnealingLR over the run
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=last["winner"])
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=len(lrs))
        expected = []
        for _ in lrs:
            expected.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        assert lrs == pytest.approx(expected, rel=1e-12, abs=1e-15)
    else:
        assert lrs == pytest.approx([last["winner"] * (1 - i / len(lrs)) for i in range(len(lrs))])
    # Earlier stages still train at their winner, with a plain set_lr.
    assert all("lrs" not in p[-1] for p in client.plans[:len(client.plans) - len(annealed) - 1])
    assert tuner.lr_bounds()[0] == 0.0 and min(lrs) >= 0.0


def test_final_decay_needs_a_budget_and_a_known_kind():
    client = FlatClient()
    tuner = build(final_decay="cosine")  # no max_steps: no last stage to anneal
    for _ in range(12):
        tuner.tell(client.execute(tuner.ask()))
    assert all("lrs" not in p[-1] for p in client.plans)
    with pytest.raises(ConfigError, match="final_decay"):
        build(final_decay="step")


# --- the default decision rules (not the paper's) ------------------------------------------


class ShapedClient(FlatClient):
    """Reports, for each run, the window ``window(lr, n)`` (a list of ``n`` losses)."""

    def __init__(self, window):
        super().__init__()
        self.window = window

    def execute(self, plan):
        actions.validate_plan(plan)
        self.plans.append(plan)
        for a in plan:
            if a["op"] == "set_lr":
                self.lr = a["lr"]
            elif a["op"] == "stop":
                self.stopped = True
                return None
            elif a["op"] == "run":
                n = a["steps"]
                lr = a["lrs"][-1] if a.get("lrs") else self.lr
                self.step += n
                return Observation(step=self.step, steps=n, losses=list(self.window(lr, n)), evals=[])


def falling(level, n, seed):
    """A loss that falls from 2.3 and levels off at ``level``, with a little noise."""
    rng = np.random.default_rng(seed)
    x = np.arange(n)
    return (2.3 - level) * np.exp(-8 * x / n) + level + 0.005 * rng.standard_normal(n)


DEFAULTS = {"min_lr": 1e-3, "max_lr": 1.0, "tau": 200, "tau_max": 200, "k": 6}


def test_a_trial_with_a_rising_tail_never_wins():
    def window(lr, n):
        if lr > 0.1:  # falls lowest and fastest, then climbs: the classic near-divergence trial
            y = falling(0.2, n, 1)
            y[n // 2:] += np.linspace(0, 0.8, n - n // 2)
            return y
        return falling(0.6 - 0.2 * math.log10(lr * 10 + 1e-9) / 3, n, 2)

    for seed in range(6):
        tuner = make_tuner("autolrs", {**DEFAULTS, "max_steps": 2000}, seed=seed)
        ShapedClient(window).drive(tuner, max_reports=40)
        for stage in tuner.stages:
            assert stage["winner"] <= 0.1, stage
            for t in stage["trials"]:
                if t["lr"] > 0.1 and t["status"] == "ok":
                    assert "rising tail" in t["unstable"]
    # The published rule picks it, on the same windows.
    paper = make_tuner("autolrs", {**DEFAULTS, "max_steps": 2000, "preset": "paper"}, seed=0)
    ShapedClient(window).drive(paper, max_reports=40)
    assert any(st["winner"] > 0.1 for st in paper.stages if any(t["lr"] > 0.1 for t in st["trials"]))


def test_forecasts_the_window_cannot_tell_apart_go_to_the_lowest_lr():
    # Every LR falls in a straight line to nearly the same point: the asymptotes are not in the
    # windows, so the forecasts are uncertain and the lowest LR is the safe choice.
    def window(lr, n):
        return np.linspace(2.3, 1.0 - 0.001 * math.log10(lr), n)

    tuner = make_tuner("autolrs", {**DEFAULTS, "max_steps": 2000}, seed=0)
    ShapedClient(window).drive(tuner, max_reports=40)
    stage = tuner.stages[0]
    assert stage["winner"] == min(t["lr"] for t in stage["trials"])
    best = make_tuner("autolrs", {**DEFAULTS, "max_steps": 2000, "tie_break": "best"}, seed=0)
    ShapedClient(window).drive(best, max_reports=40)
    assert best.stages[0]["winner"] == max(t["lr"] for t in best.stages[0]["trials"])


def test_a_clearly_better_trial_still_wins():
    def window(lr, n):
        return falling(0.3 if 0.02 < lr < 0.2 else 0.9, n, int(lr * 1e6) % 1000)

    tuner = make_tuner("autolrs", {**DEFAULTS, "max_steps": 2000}, seed=1)
    ShapedClient(window).drive(tuner, max_reports=40)
    for stage in tuner.stages:
        if any(0.02 < t["lr"] < 0.2 for t in stage["trials"]):
            assert 0.02 < stage["winner"] < 0.2


def test_defaults_keep_the_best_trial_and_anneal_and_paper_preset_does_not():
    tuner = make_tuner("autolrs", {"max_steps": 1000, "initial_lr": 0.1})
    cfg = tuner.config
    assert cfg["keep_best_trial"] is True and cfg["final_decay"] == "cosine"
    assert cfg["loss_floor"] == 0.0 and cfg["pessimism"] == 1.0 and cfg["check_trials"] is True
    paper = make_tuner("autolrs", {"max_steps": 1000, "initial_lr": 0.1, "preset": "paper"})
    assert paper.config["keep_best_trial"] is False and paper.config["final_decay"] == "none"
    assert paper.config["loss_floor"] is None and paper.config["pessimism"] == 0.0
    mixed = make_tuner("autolrs", {"preset": "paper", "keep_best_trial": True})
    assert mixed.config["keep_best_trial"] is True  # a knob set by the user wins over the preset
    with pytest.raises(ConfigError, match="preset"):
        make_tuner("autolrs", {"preset": "fast"})


def test_a_job_without_max_steps_gets_one_notice():
    assert make_tuner("autolrs", {"max_steps": 1000}).notices == []
    notices = make_tuner("autolrs", {}).notices
    assert len(notices) == 1 and "max_steps" in notices[0]
