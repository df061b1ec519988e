"""What a job can ask of the server is bounded: every integer knob of every tuner has a limit,
checked when the tuner is built, with a message that names the knob; misspelt knobs get a
"did you mean"; a schedule jumps to a far step in closed form; tuners resume where a restarted
trainer stands, and say ahead the plan that follows whatever the report says."""

from __future__ import annotations

import pytest

from autolrs import actions
from autolrs.actions import Observation
from autolrs.errors import ConfigError
from autolrs.server.config import load_config
from autolrs.tuners import JOB_KEYS, TUNERS, make_tuner
from autolrs.tuners.base import MAX_STEPS

JOB = {"initial_lr": 0.1, "max_steps": 1000, "has_val_fn": True, "has_probe_fn": True}


def integer_knobs(cls) -> list[str]:
    ints = [k for k, v in cls.defaults.items() if isinstance(v, int) and not isinstance(v, bool)]
    return ints + [k for k in ("skip_start", "skip_end") if k in cls.defaults]  # integers that default to None


@pytest.mark.parametrize("name", sorted(TUNERS))
def test_every_integer_knob_has_a_limit_that_is_enforced(name):
    cls = TUNERS[name]
    assert set(integer_knobs(cls)) <= set(cls.limits), f"{name}: knobs without a limit"
    assert set(cls.limits) <= set(cls.defaults)
    for knob, cap in cls.limits.items():
        with pytest.raises(ConfigError, match=rf"'{cls.public_name(knob)}' is {cap + 1}; at most {cap}"):
            make_tuner(name, {**JOB, knob: cap + 1})
    with pytest.raises(ConfigError, match="'max_steps'.*at most"):
        make_tuner(name, {**JOB, "max_steps": MAX_STEPS + 1})


@pytest.mark.parametrize("name", sorted(TUNERS))
def test_the_largest_chunks_fit_in_a_plan(name):
    cls = TUNERS[name]
    config = {**JOB, **{k: cap for k, cap in cls.limits.items() if k in ("chunk", "every")}}
    tuner = make_tuner(name, config)
    plan = actions.validate_plan(tuner.ask())
    assert all(len(a.get("lrs", [])) <= actions.MAX_RUN_LRS for a in plan)


def test_unknown_knobs_get_a_did_you_mean_and_no_server_filled_facts():
    with pytest.raises(ConfigError) as info:
        make_tuner("cosine", {**JOB, "T0": 5})
    message = str(info.value)
    assert "did you mean 'T_0'" in message
    valid = message.split("valid:")[1]
    assert not any(key in valid for key in JOB_KEYS)  # facts the server fills in are not the user's
    with pytest.raises(ConfigError, match="did you mean 'lr_max'"):
        make_tuner("autolrs", {"lr_mx": 0.5})
    with pytest.raises(ConfigError, match=r"did you mean 'T_0'.*valid: T_0"):
        load_config(overrides={"tuners": {"cosine": {"T0": 5}}})
    with pytest.raises(ConfigError, match="did you mean 'port'"):
        load_config(overrides={"server": {"prot": 1}})


@pytest.mark.parametrize("name, config", [("cosine", {"T_0": 700, "T_mult": 2}), ("cosine", {"T_0": 333}),
                                          ("step", {"step_size": 1000, "gamma": 0.9}),
                                          ("exponential", {"gamma": 0.99999}), ("constant", {})])
def test_a_far_report_jumps_in_closed_form(name, config):
    """A report a million steps ahead costs no million recurrence steps, and lands where the
    recurrence would (exactly for cosine's integer state, to rounding for the products)."""
    far, slow = make_tuner(name, {**JOB, **config, "max_steps": None}), make_tuner(name, {**JOB, **config, "max_steps": None})
    recurrences = []
    original = far._next
    far._next = lambda v, step: recurrences.append(step) or original(v, step)
    far.tell(Observation(step=10**9 - 7))
    assert far.step == 10**9 - 7 and len(recurrences) == 0  # the recurrence would take a billion steps
    assert len(far.ask()[0]["lrs"]) == far.chunk and recurrences  # and the plan is built from there
    slow.tell(Observation(step=300_000))  # replayed step by step (below the limit twice)
    jumped = make_tuner(name, {**JOB, **config, "max_steps": None})
    jumped.tell(Observation(step=200_001))
    jumped.tell(Observation(step=300_000))
    near = make_tuner(name, {**JOB, **config, "max_steps": None})
    near.vars = near._at(300_000)
    assert near.ask()[0]["lrs"] == pytest.approx(slow.ask()[0]["lrs"], rel=1e-9)
    if name in ("cosine", "constant"):
        assert near.vars == slow.vars


def test_next_plan_is_the_plan_after_the_report():
    for name in ("constant", "step", "exponential", "cosine"):
        tuner = make_tuner(name, {**JOB, "chunk": 7})
        for _ in range(5):
            ahead, run = tuner.ask_next(), tuner.ask()[-1]
            tuner.tell(Observation(step=run["start_step"] + run["steps"], steps=run["steps"]))
            assert ahead == tuner.ask()
        tuner = make_tuner(name, {**JOB, "chunk": 500, "max_steps": 900})
        assert tuner.ask_next()[-1]["steps"] == 400
        tuner.tell(Observation(step=500, steps=500))
        assert tuner.ask_next() is None  # the budget ends with the current chunk


def test_tuners_resume_where_a_restarted_trainer_stands():
    cosine = make_tuner("cosine", {**JOB, "T_0": 40, "chunk": 10})
    for step in (10, 20, 30):
        cosine.tell(Observation(step=step, steps=10))
    cosine.resume(15)
    fresh = make_tuner("cosine", {**JOB, "T_0": 40, "chunk": 10})
    fresh.tell(Observation(step=15, steps=15))
    assert cosine.ask() == fresh.ask() and cosine.ask()[0]["start_step"] == 15

    autolrs = make_tuner("autolrs", {**JOB, "tau": 10, "tau_max": 20, "k": 3, "trial_fraction": 0.5})
    for step in (5, 10):  # two trials of stage 1
        autolrs.tell(Observation(step=step, steps=5, losses=[2.0, 1.9, 1.8, 1.7, 1.6]))
    assert autolrs.in_search() and autolrs.ask()[0] == actions.restore("stage")
    autolrs.resume(7)  # the trainer's checkpoint: mid-stage, with no slot
    plan = autolrs.ask()
    assert plan[0] == actions.checkpoint("stage") and plan[-1]["start_step"] == 7
    assert autolrs.summary()["stage"] == 1 and autolrs.summary()["trial"] == 0


@pytest.mark.parametrize("name", sorted(TUNERS))
def test_search_plans_are_known_as_such(name):
    tuner = make_tuner(name, JOB)
    searching = tuner.in_search()
    assert searching == (name in ("autolrs", "range_test", "loss_diff", "auto"))
    assert not searching or tuner.ask_next() is None or name == "autolrs"
