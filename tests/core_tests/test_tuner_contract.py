"""The contract every registered tuner keeps, checked through a simulated client."""

import copy
import math

import pytest

from autolrs import actions
from autolrs.wire import protocol
from autolrs.testing import QuadraticBowl, SimulatedClient
from autolrs.tuners import TUNERS, make_tuner

JOB = {"initial_lr": 0.1, "max_steps": 600, "has_val_fn": True}
# Small knobs so each contract run takes a few hundred simulated steps; a tuner missing
# here runs with its defaults.
SMALL = {
    "constant": {"chunk": 50},
    "step": {"chunk": 64, "step_size": 40, "gamma": 0.5},
    "exponential": {"chunk": 64, "gamma": 0.99},
    "cosine": {"chunk": 64, "T_0": 30, "T_mult": 2, "eta_min": 0.001},
    "autolrs": {"tau": 40, "tau_max": 160, "k": 3, "min_lr": 0.001, "max_lr": 1.0},
    "range_test": {"start_lr": 1e-4, "end_lr": 10.0, "num_iter": 60, "chunk": 8},
    "record": {"chunk": 50, "eval_every": 10, "lr_min": 1e-3, "lr_max": 1.0},
    "hd": {"every": 20, "beta": 0.05},
    "rtho": {"every": 20, "beta": 0.05},
    "marthe": {"every": 20, "beta": 0.05},
    # has_probe_fn is a job key the callback sends when it has a probe_fn.
    "loss_diff": {"lr_min": 1e-3, "lr_max": 2.0, "num_evals": 8, "num_subsamples": 6, "has_probe_fn": True},
}


# Configurations that change a tuner's plans enough to run the contract again: "name:variant".
VARIANTS = {
    "autolrs:auto-bounds": ("autolrs", {**SMALL["autolrs"], "min_lr": "auto", "max_lr": "auto",
                                        "auto_start_lr": 1e-4, "auto_num_iter": 40}),
    "autolrs:keep-best-final-decay": ("autolrs", {**SMALL["autolrs"], "keep_best_trial": True,
                                                  "final_decay": "cosine"}),
    "loss_diff:linear-max-applied": ("loss_diff", {**SMALL["loss_diff"], "spacing": "linear", "method": "max",
                                                   "apply_best": True}),
}


# Every case runs with the divergence guard on (short segments, so runs are split and snapshots
# frequent) and off.
GUARDS = {"guard": {"guard": True, "guard_every": 16}, "no-guard": {"guard": False}}


def build(name, seed=7):
    name, guard = name.rsplit("/", 1)
    tuner, config = VARIANTS.get(name, (name, SMALL.get(name, {})))
    return make_tuner(tuner, {**config, **JOB, **GUARDS[guard]}, seed=seed)


def wire_round_trip(obj):
    return protocol.loads(protocol.dumps(obj))


@pytest.fixture(params=[f"{n}/{g}" for n in sorted(TUNERS) + sorted(VARIANTS) for g in GUARDS])
def name(request):
    return request.param


def test_same_inputs_give_same_actions(name):
    a = SimulatedClient(seed=1).drive(build(name))
    b = SimulatedClient(seed=1).drive(build(name))
    assert a.plans == b.plans
    assert a.stopped, f"{name} did not stop within max_steps"


def test_ask_has_no_side_effects(name):
    tuner = build(name)
    client = SimulatedClient(seed=2)
    for _ in range(5):
        before = wire_round_trip(tuner.state_dict())
        plan = tuner.ask()
        assert tuner.ask() == plan
        assert wire_round_trip(tuner.state_dict()) == before
        obs = client.execute(plan)
        if obs is None:
            break
        tuner.tell(obs)


@pytest.mark.parametrize("split", [1, 3, 6])
def test_state_dict_mid_run_continues_identically(name, split):
    reference = SimulatedClient(seed=3).drive(build(name))
    tuner = build(name)
    client = SimulatedClient(seed=3)
    client.drive(tuner, max_reports=split)
    # A fresh tuner (built with the same seed and config) loaded from the wire form.
    resumed = build(name)
    resumed.load_state_dict(wire_round_trip(tuner.state_dict()))
    client.drive(resumed)
    assert client.plans == reference.plans


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_losses_do_not_crash(name, bad):
    every_seventh = lambda step, loss: bad if step % 7 == 0 else loss  # noqa: E731
    client = SimulatedClient(seed=4, corrupt=every_seventh).drive(build(name))
    assert client.stopped
    always = SimulatedClient(seed=4, corrupt=lambda step, loss: bad).drive(build(name))
    assert always.stopped


def test_diverging_model_does_not_crash(name):
    client = SimulatedClient(QuadraticBowl(diverge_lr=0.05), seed=5).drive(build(name))
    assert client.stopped


def test_lrs_stay_in_bounds(name):
    tuner = build(name)
    lo, hi = tuner.lr_bounds()
    client = SimulatedClient(seed=6).drive(tuner)
    for plan in client.plans:
        for lr in actions.plan_lrs(plan):
            assert math.isfinite(lr) and lo <= lr <= hi, (name, lr, lo, hi)


def test_every_action_encodes_on_the_wire(name):
    client = SimulatedClient(seed=8).drive(build(name))
    for plan in client.plans:
        decoded = wire_round_trip(plan)
        assert decoded == plan
        actions.validate_plan(decoded)


def test_state_dict_is_plain_json(name):
    tuner = build(name)
    SimulatedClient(seed=9).drive(tuner, max_reports=4)
    state = tuner.state_dict()
    assert wire_round_trip(state) == wire_round_trip(copy.deepcopy(state))


def test_unknown_option_is_a_clear_error(name):
    name, guard = name.rsplit("/", 1)
    with pytest.raises(ValueError, match="unknown option"):
        make_tuner(VARIANTS.get(name, (name,))[0], {**JOB, **GUARDS[guard], "no_such_knob": 1})
