"""The ``auto`` tuner: sweep, annealed trials, annealed run with rollbacks; and the divergence rules."""

import math

import numpy as np
import pytest

from autolrs import divergence
from autolrs.testing import QuadraticBowl, SimulatedClient
from autolrs.tuners import ConfigError, make_tuner
from autolrs.tuners.auto import BASE, BEST, GOOD
from autolrs.tuners.phases import warmup_cosine

JOB = {"max_steps": 2000, "initial_lr": 0.1}


def drive(config=None, seed=0, corrupt=None, best_lr=0.1, **client):
    tuner = make_tuner("auto", {**JOB, **(config or {})}, seed=seed)
    sim = SimulatedClient(QuadraticBowl(best_lr=best_lr, rate=0.005), seed=seed, corrupt=corrupt, **client)
    sim.drive(tuner)
    return tuner, sim


def ops(plan):
    return [(a["op"], a.get("slot")) for a in plan]


# --- divergence rules -------------------------------------------------------------------------


def test_a_non_finite_loss_is_divergence():
    assert "non-finite" in divergence.check_segment([1.0, math.nan, 0.9], [])
    assert divergence.check_segment([1.0, 0.9], []) is None  # nothing to compare with yet


def test_a_sustained_rise_is_divergence_noise_is_not():
    rng = np.random.default_rng(0)
    calm = 0.5 + 0.1 * rng.standard_normal(200)
    assert divergence.check_segment(calm, [0.5, 0.48]) is None
    risen = 1.2 + 0.1 * rng.standard_normal(200)
    assert "rose" in divergence.check_segment(risen, [0.5, 0.48])
    # a tiny loss that doubles within its own noise is not a rise
    tiny = np.abs(0.002 + 0.004 * rng.standard_normal(10))
    assert divergence.check_segment(tiny, [0.001]) is None


def test_one_bad_batch_is_not_a_rise():
    y = [0.5] * 99 + [50.0]
    assert divergence.check_segment(y, [0.5]) is None


# --- the tuner ----------------------------------------------------------------------------------


def test_phases_sweep_trials_then_annealed_run_within_the_budget():
    tuner, sim = drive()
    plans = sim.plans
    assert ops(plans[0])[0] == ("checkpoint", "range_test")
    first_trial = next(i for i, p in enumerate(plans) if ("checkpoint", BASE) in ops(p))
    assert ops(plans[first_trial])[:2] == [("restore", "range_test"), ("discard", "range_test")]
    s = tuner.summary()
    assert s["phase"] == "done" and sim.step == 2000 and sim.stopped
    # Largest LR first; here it wins, so the second trial (worse) ends the trials.
    lrs = [t[0] for t in s["trials"]]
    assert lrs == pytest.approx(s["candidates"][: len(lrs)]) and len(s["candidates"]) == 3
    assert s["candidates"][0] / s["candidates"][1] == pytest.approx(2.0)
    assert s["candidates"][1] / s["candidates"][2] == pytest.approx(2.0)
    assert len(lrs) == 2 and s["trials"][1][1] > s["trials"][0][1] and s["peak"] == lrs[0]
    # The search share (sweep + losing trials) stays under 15 % of the budget.
    assert s["search_steps"] / 2000 <= 0.15
    assert s["search_steps"] == tuner.sweep.pos + 60 and tuner.sweep.pos <= 100  # the sweep stops at divergence
    # Every trial anneals to 0; the run ends annealed.
    for plan in plans[first_trial : first_trial + len(lrs)]:
        lrs_run = plan[-1]["lrs"]
        assert lrs_run[-1] < lrs_run[0] / 30
    assert sim.lr_history[-1] < 1e-3 * s["peak"]
    assert not sim.slots  # every checkpoint discarded at the end


def test_the_winner_continues_from_its_own_weights():
    tuner, sim = drive(seed=1)
    s = tuner.summary()
    scores = [t[1] for t in s["trials"]]
    winner = int(np.argmin(scores))
    assert s["peak"] == s["trials"][winner][0]
    end_of_trials = next(p for p in sim.plans if ("discard", BASE) in ops(p))
    if winner != len(scores) - 1:
        assert ("restore", BEST) in ops(end_of_trials)
    else:
        assert ("restore", BEST) not in ops(end_of_trials) and ("restore", BASE) not in ops(end_of_trials)


def test_trials_go_on_down_while_each_beats_the_last():
    # A bowl whose best LR lies below every candidate: each trial improves on the one before.
    tuner, sim = drive(best_lr=0.02)
    s = tuner.summary()
    scores = [t[1] for t in s["trials"]]
    assert [t[0] for t in s["trials"]] == pytest.approx(s["candidates"])  # all three tried, largest first
    assert scores[0] > scores[1] > scores[2] and s["peak"] == s["candidates"][2]
    assert s["search_steps"] == tuner.sweep.pos + 2 * 60


def test_a_nan_rolls_back_to_the_last_good_point_with_half_the_lr():
    hit = {"done": False}

    def corrupt(step, loss):
        if step > 1200 and not hit["done"]:
            hit["done"] = True
            return math.nan
        return loss

    tuner, sim = drive(corrupt=corrupt)
    events = tuner.summary()["events"]
    assert len(events) == 1 and events[0]["action"] == "rollback" and "non-finite" in events[0]["reason"]
    ev = events[0]
    assert ev["lr_after"] == pytest.approx(0.5 * warmup_cosine(
        tuner.train["peak"], ev["to_step"] - tuner.train["start"], 2000 - tuner.train["start"], tuner.train["warmup"]))
    restore_plan = next(p for p in sim.plans if p[0] == {"op": "restore", "slot": GOOD})
    assert restore_plan[-1]["lrs"][0] == pytest.approx(ev["lr_after"], rel=1e-9)
    assert tuner.summary()["phase"] == "done" and sim.step == 2000


def test_a_run_that_keeps_diverging_stops_with_a_reason():
    tuner, sim = drive({"max_cuts": 2}, corrupt=lambda step, loss: math.nan if step > 1000 else loss)
    s = tuner.summary()
    assert [e["action"] for e in s["events"]] == ["rollback", "rollback", "stop"]
    assert s["phase"] == "done" and "diverged after 2 LR cuts" in s["stop_reason"]
    assert sim.stopped and sim.step < 2000
    assert sim.plans[-1][0] == {"op": "restore", "slot": GOOD}  # ends on the last good weights


class Overfitting(QuadraticBowl):
    """Training loss keeps falling; the validation loss turns up after a while."""

    def val_loss(self, state):
        return 0.3 + (0.5 - state) ** 2 * 4


def test_validation_loss_rising_rolls_back_to_the_best_validation_point():
    tuner = make_tuner("auto", {**JOB, "has_val_fn": True}, seed=0)
    sim = SimulatedClient(Overfitting(best_lr=0.1, rate=0.005), seed=0).drive(tuner)
    events = tuner.summary()["events"]
    assert events and all(e["action"] == "rollback" for e in events)
    assert "overfitting" in events[0]["reason"]
    assert sim.stopped and sim.step == 2000


def test_needs_max_steps_and_checks_its_knobs():
    with pytest.raises(ConfigError, match="max_steps"):
        make_tuner("auto", {"initial_lr": 0.1})
    with pytest.raises(ConfigError, match="rule"):
        make_tuner("auto", {**JOB, "rule": "median"})
    with pytest.raises(ConfigError, match="cut"):
        make_tuner("auto", {**JOB, "cut": 1.5})
    with pytest.raises(ConfigError, match="sweep_min"):
        make_tuner("auto", {"max_steps": 100})


@pytest.mark.parametrize("factor", [0.1, 10.0])
def test_a_wrong_optimizer_lr_still_finds_the_good_region(factor):
    tuner = make_tuner("auto", {"max_steps": 2000, "initial_lr": 0.1 * factor}, seed=0)
    SimulatedClient(QuadraticBowl(best_lr=0.1, rate=0.005), seed=0).drive(tuner)
    assert 0.02 <= tuner.summary()["peak"] <= 0.8
