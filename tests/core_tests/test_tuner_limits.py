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
from autolrs.tuners import JOB_KEYS, TUNERS, guard_knobs, make_tuner
from autolrs.tuners.base import MAX_STEPS, Tuner
from autolrs.tuners.phases import FinalAnneal

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


def test_the_guards_knobs_have_limits_too():
    assert set(guard_knobs.LIMITS) == {"guard_every", "guard_max"}  # (guard_factor is a factor below 1)
    for name in ("cosine", "auto"):  # auto's guard is off by default; its knobs are checked all the same
        for knob, cap in guard_knobs.LIMITS.items():
            with pytest.raises(ConfigError, match=rf"'{knob}' is {cap + 1}; at most {cap}"):
                make_tuner(name, {**JOB, knob: cap + 1})
            make_tuner(name, {**JOB, knob: cap})


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


#: The tuners alone, without the divergence guard that make_tuner wraps them in by default.
BARE = {**JOB, "guard": False}


@pytest.mark.parametrize("name, config", [("cosine", {"T_0": 700, "T_mult": 2}), ("cosine", {"T_0": 333}),
                                          ("step", {"step_size": 1000, "gamma": 0.9}),
                                          ("exponential", {"gamma": 0.99999}), ("constant", {})])
def test_a_far_report_jumps_in_closed_form(name, config):
    """A report a billion steps ahead costs no billion recurrence steps, and lands where the
    recurrence would (exactly for cosine's integer state, to rounding for the products)."""
    def build():
        return make_tuner(name, {**BARE, **config, "max_steps": None})

    far, slow = build(), build()
    recurrences = []
    original = far._next
    far._next = lambda v, step: recurrences.append(step) or original(v, step)
    far.tell(Observation(step=10**9 - 7))
    assert far.step == 10**9 - 7 and len(recurrences) == 0  # the recurrence would take a billion steps
    assert len(far.ask()[0]["lrs"]) == far.chunk and recurrences  # and the plan is built from there
    slow.tell(Observation(step=300_000))  # replayed step by step (below the limit twice)
    jumped = build()
    jumped.tell(Observation(step=200_001))
    jumped.tell(Observation(step=300_000))
    near = build()
    near.vars = near._at(300_000)
    assert near.ask()[0]["lrs"] == pytest.approx(slow.ask()[0]["lrs"], rel=1e-9)
    if name in ("cosine", "constant"):
        assert near.vars == slow.vars


def test_next_plan_is_the_plan_after_the_report():
    for name in ("constant", "step", "exponential", "cosine"):
        tuner = make_tuner(name, {**BARE, "chunk": 7})
        for _ in range(5):
            ahead, run = tuner.ask_next(), tuner.ask()[-1]
            tuner.tell(Observation(step=run["start_step"] + run["steps"], steps=run["steps"]))
            assert ahead == tuner.ask()
        tuner = make_tuner(name, {**BARE, "chunk": 500, "max_steps": 900})
        assert tuner.ask_next()[-1]["steps"] == 400
        tuner.tell(Observation(step=500, steps=500))
        assert tuner.ask_next() is None  # the budget ends with the current chunk


def test_with_the_guard_the_plan_sent_ahead_is_the_rest_of_the_schedule():
    """The guard splits a chunk into segments; what it sends ahead is the rest of the chunk and
    the next chunk as one run (no slot touched): a client cut off trains on the schedule's own
    LRs past the chunk's end."""
    bare = make_tuner("cosine", {**BARE, "T_0": 1000, "chunk": 500, "max_steps": None})
    guarded = make_tuner("cosine", {**JOB, "T_0": 1000, "chunk": 500, "max_steps": None, "guard_every": 100})
    schedule = bare.ask()[0]["lrs"] + bare.ask_next()[0]["lrs"]
    step = 0
    for _ in range(5):  # the chunk's five segments, each reported healthy
        run = guarded.ask()[-1]
        assert run["steps"] == 100 and run["lrs"] == schedule[step:step + 100]
        ahead = guarded.ask_next()
        assert [a["op"] for a in ahead] == ["run"]
        rest = ahead[0]
        assert rest["start_step"] == step + 100 and rest["lrs"] == schedule[step + 100:len(rest["lrs"]) + step + 100]
        assert rest["start_step"] + rest["steps"] == 1000
        step += 100
        guarded.tell(Observation(step=step, steps=100, losses=[2.0 - 0.001 * i for i in range(100)]))
    # A rollback: the rest of the chunk is sent ahead at the cut LRs.
    guarded.tell(Observation(step=600, steps=100, losses=[float("nan")] * 100))
    assert guarded.summary()["guard"]["rollbacks"] == 1
    assert guarded.ask()[0] == actions.restore("guard") and guarded.ask()[-1]["start_step"] == 600
    rest = guarded.ask_next()[0]
    assert rest["start_step"] == 700 and rest["lrs"] == pytest.approx([0.5 * lr for lr in schedule[700:1000]])


def test_tuners_resume_where_a_restarted_trainer_stands():
    cosine = make_tuner("cosine", {**BARE, "T_0": 40, "chunk": 10})
    for step in (10, 20, 30):
        cosine.tell(Observation(step=step, steps=10))
    cosine.resume(15)
    fresh = make_tuner("cosine", {**BARE, "T_0": 40, "chunk": 10})
    fresh.tell(Observation(step=15, steps=15))
    assert cosine.ask() == fresh.ask() and cosine.ask()[0]["start_step"] == 15

    # With the guard: no slot of the dead trainer is restored; the next plan saves a new one.
    guarded = make_tuner("cosine", {**JOB, "T_0": 40, "chunk": 10, "guard_every": 5})
    for step in (5, 10, 15):
        guarded.tell(Observation(step=step, steps=5, losses=[1.0] * 5))
    guarded.resume(12)
    plan = guarded.ask()
    assert [a["op"] for a in plan] == ["discard", "checkpoint", "run"] and plan[-1]["start_step"] == 12
    assert plan[-1]["lrs"] == fresh_lrs(12, 5)

    autolrs = make_tuner("autolrs", {**BARE, "tau": 10, "tau_max": 20, "k": 3, "trial_fraction": 0.5})
    for step in (5, 10):  # two trials of stage 1
        autolrs.tell(Observation(step=step, steps=5, losses=[2.0, 1.9, 1.8, 1.7, 1.6]))
    assert autolrs.in_search() and autolrs.ask()[0] == actions.restore("stage")
    autolrs.resume(7)  # the trainer's checkpoint: mid-stage, with no slot
    plan = autolrs.ask()
    assert plan[0] == actions.checkpoint("stage") and plan[-1]["start_step"] == 7
    assert autolrs.summary()["stage"] == 1 and autolrs.summary()["trial"] == 0


def fresh_lrs(step: int, n: int) -> list[float]:
    bare = make_tuner("cosine", {**BARE, "T_0": 40, "chunk": n})
    bare.tell(Observation(step=step))
    return bare.ask()[0]["lrs"]


def test_autolrs_resumes_in_its_warm_up_and_its_final_anneal():
    config = {**BARE, "tau": 10, "tau_max": 20, "k": 2, "trial_fraction": 0.5, "warmup_steps": 20, "max_steps": 60}
    tuner = make_tuner("autolrs", config)
    ramp = tuner.ask()[-1]["lrs"]
    tuner.resume(8)  # mid warm-up: the ramp goes on at its step 8
    assert tuner.ask()[-1]["start_step"] == 8 and tuner.ask()[-1]["lrs"] == ramp[8:]
    tuner.resume(25)  # past it: the stages begin there
    plan = tuner.ask()
    assert plan[0] == actions.checkpoint("stage") and plan[-1]["start_step"] == 25


class _OneRun(Tuner):
    """A tuner whose one plan is a run at a set LR to the end of the job (what FinalAnneal anneals)."""

    name = "one_run"

    def __init__(self, max_steps: int):
        super().__init__({"max_steps": max_steps})
        self.step = 0

    def ask(self):
        return [actions.set_lr(0.1), actions.run(self.config["max_steps"] - self.step, self.step)]

    def tell(self, observation):
        self.step = observation.step

    def resume(self, step):
        self.step = step

    def state_dict(self):
        return {"step": self.step}

    def load_state_dict(self, state):
        self.step = state["step"]

    def lr_bounds(self):
        return (0.1, 0.1)


def test_an_annealed_final_run_resumes_at_the_trainers_step():
    uninterrupted, resumed = FinalAnneal(_OneRun(2500), "cosine", 2500), FinalAnneal(_OneRun(2500), "cosine", 2500)
    full = []
    while uninterrupted.ask()[-1]["op"] == "run" and uninterrupted.step < 2500:
        run = uninterrupted.ask()[-1]
        full += run["lrs"]
        uninterrupted.tell(Observation(step=run["start_step"] + run["steps"], steps=run["steps"]))
    assert len(full) == 2500 and full[0] == 0.1
    run = resumed.ask()[-1]
    resumed.tell(Observation(step=1000, steps=1000))
    resumed.resume(1500)  # the trainer's checkpoint: halfway through the second chunk
    run = resumed.ask()[-1]
    assert run["start_step"] == 1500 and run["lrs"] == full[1500:2500]
    resumed.resume(700)  # an older checkpoint: back to that step of the same annealed run
    run = resumed.ask()[-1]
    assert run["start_step"] == 700 and run["lrs"] == full[700:1700]


@pytest.mark.parametrize("name", sorted(TUNERS))
def test_search_plans_are_known_as_such(name):
    tuner = make_tuner(name, JOB)
    searching = tuner.in_search()
    assert searching == (name in ("autolrs", "range_test", "loss_diff", "auto"))
    assert not searching or tuner.ask_next() is None or name == "autolrs"
