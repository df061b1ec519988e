"""The server's LR rule for hd, rtho and marthe, and the protocol fields they use."""

import json
import math

import pytest

from autolrs import actions
from autolrs.wire import protocol
from autolrs.actions import Observation
from autolrs.tuners import ConfigError, make_tuner
from autolrs.tuners.hypergradient import HypergradientTuner

# The rules alone, told reports of any shape (tests/core_tests/test_guard.py has the guard's).
JOB = {"initial_lr": 0.1, "max_steps": 1000, "has_val_fn": True, "guard": False}
RULE = {**JOB, "doubling_steps": None}  # the bare rule, without the limit on rises


def tell(tuner, hs, vb=None, step=None, steps=None, losses=None, optimizer=None):
    steps = len(hs) if steps is None else steps
    step = tuner.step + steps if step is None else step
    report = {"h": list(hs), "vb": vb, "val_loss": 1.0}
    if optimizer is not None:
        report["optimizer"] = optimizer
    tuner.tell(Observation(step=step, steps=steps, losses=[1.0] * steps if losses is None else losses,
                           hypergrad=report))


def test_hd_applies_every_step_in_order_with_clipping_and_clamping():
    t = make_tuner("hd", {**RULE, "beta": 0.01, "clip": 2.0, "lr_max": 0.5})
    plan = t.ask()
    assert plan[0] == actions.set_lr(0.1) and plan[-1]["hypergrad"] == {"method": "hd"}
    assert plan[-1]["steps"] == 10 and "hypergrad" in plan[-1]["collect"]
    tell(t, [-1.0, -3.0])  # -3 is clipped to -2
    assert t.lr == pytest.approx(0.1 + 0.01 + 0.02) and t.clipped == 1
    tell(t, [-1e300] * 3)  # huge but finite: clipped to -2 each
    assert t.lr == pytest.approx(0.19) and t.clipped == 4
    t = make_tuner("hd", {**RULE, "beta": 0.01, "lr_max": 0.5})
    tell(t, [-1e300, -1e308])
    assert t.lr == 0.5  # lr_max
    tell(t, [1e308] * 3)
    assert t.lr == 0.0  # lr_min, never negative
    assert t.ask()[0] == actions.set_lr(0.0)


def test_non_finite_hypergradients_are_skipped_and_counted():
    t = make_tuner("hd", {**RULE, "beta": 0.01})
    tell(t, [math.nan, math.inf, -math.inf, -1.0])
    assert t.skipped == 3 and t.applied == 1 and t.lr == pytest.approx(0.11)
    tell(t, [])  # a segment without the hypergradient keeps the LR
    assert t.missing == 1 and t.lr == pytest.approx(0.11)


def test_beta_follows_the_product_of_successive_hypergradients():
    t = make_tuner("hd", {**RULE, "beta": 0.01, "alpha": 0.001})
    tell(t, [-1.0, -2.0])  # agreeing signs: beta grows by alpha * 2
    assert t.beta == pytest.approx(0.012)
    tell(t, [3.0])  # disagreeing: shrinks
    assert t.beta == pytest.approx(0.012 - 0.006)
    tell(t, [-1e3])
    assert t.beta == 0.0  # never negative


def test_rtho_and_marthe_specs_and_adaptive_mu():
    assert make_tuner("rtho", JOB).ask()[-1]["hypergrad"] == {"method": "tangent", "mu": 1.0, "vb": False}
    assert make_tuner("marthe", {**JOB, "mu": 0.5}).ask()[-1]["hypergrad"]["mu"] == 0.5
    t = make_tuner("marthe", {**JOB, "beta": 0.0})  # default mu -1: adaptive, starts at 0
    assert t.ask()[-1]["hypergrad"] == {"method": "tangent", "mu": 0.0, "vb": True}
    tell(t, [1.0], vb=0.4)  # z = lr / vb = 0.25, c = 0
    assert t.mu == pytest.approx(0.25)
    tell(t, [1.0], vb=0.4)  # c = 0.25: mu = 0.25 ** (1 / 1.25)
    assert t.mu == pytest.approx(0.25 ** 0.8)
    for bad in (0.0, -1.0, math.nan, None):  # the original divided by zero here
        tell(t, [1.0], vb=bad)
        assert t.mu == 0.0
    tell(t, [1.0], vb=0.01)  # lr / vb > 1: z = 1
    assert t.mu == 1.0


@pytest.mark.parametrize("config,match", [
    ({"lr_min": 0.2}, "outside"), ({"lr_max": 0.05}, "outside"), ({"beta": -1}, "beta"),
    ({"every": 0}, "every"), ({"clip": 0}, "clip"), ({"mu": 1.5}, "mu")])
def test_bad_knobs_are_clear_errors(config, match):
    with pytest.raises(ConfigError, match=match):
        make_tuner("marthe", {**JOB, **config})
    with pytest.raises(ConfigError, match="unknown option"):
        make_tuner("rtho", {**JOB, "mu": 0.5})


def test_protocol_fields_are_validated_and_old_messages_unchanged():
    assert "hypergrad" not in actions.run(5, 0)
    plan = [actions.run(5, 0, hypergrad={"method": "tangent", "mu": 0.3, "vb": True})]
    assert actions.validate_plan(protocol.loads(protocol.dumps(plan))) == plan
    for spec in ({"method": "x"}, {"method": "tangent", "mu": 2}, {"method": "hd", "vb": 1}, "hd"):
        with pytest.raises(ValueError, match="action 0"):
            actions.validate_plan([{**actions.run(5, 0), "hypergrad": spec}])
    body = {"step": 3, "steps": 3, "losses": [1, 2, 3], "hypergrad": {"h": [1, {"$float": "nan"}], "vb": 2}}
    obs = Observation.from_body(protocol.loads(protocol.dumps(body)))
    assert obs.hypergrad["h"][0] == 1.0 and math.isnan(obs.hypergrad["h"][1]) and obs.hypergrad["vb"] == 2.0
    assert "hypergrad" not in Observation(step=1).to_body()
    for bad in ({"h": "x"}, {"h": [True]}, {"h": [], "vb": "1"}, [1]):
        with pytest.raises(ValueError, match="hypergrad"):
            Observation.from_body({"step": 1, "hypergrad": bad})


def test_a_segment_hypergradient_stands_for_each_of_its_steps():
    """beta is per training step whatever ``every`` is: marthe's one hypergradient at the end of a
    10-step segment moves the LR as much as hd's ten per-step ones of the same value (AdaTune's
    per-step semantics), and a shorter last segment counts its own steps."""
    hd = make_tuner("hd", {**RULE, "beta": 0.001})
    marthe = make_tuner("marthe", {**RULE, "beta": 0.001, "mu": 0.0})
    tell(hd, [-2.0] * 10)
    tell(marthe, [-2.0], steps=10)
    assert hd.lr == pytest.approx(0.1 + 0.001 * 10 * 2.0) and marthe.lr == pytest.approx(hd.lr)
    tell(marthe, [1.0], steps=4)
    assert marthe.lr == pytest.approx(0.12 - 0.001 * 4 * 1.0)
    # Adaptive mu adds mu to its sum once per training step, as AdaTune does at every step.
    t = make_tuner("marthe", {**RULE, "beta": 0.0})
    tell(t, [1.0], vb=0.4, steps=10)  # z = 0.25, c = 0 (mu was 0)
    assert t.mu == pytest.approx(0.25)
    tell(t, [1.0], vb=0.4, steps=10)  # c = 10 * 0.25
    assert t.mu == pytest.approx(0.25 ** (1 / 3.5))


@pytest.mark.parametrize("name", ["hd", "rtho", "marthe"])
def test_default_beta_follows_the_optimizer_the_client_reports(name):
    sgd, adam = (HypergradientTuner.default_beta[k] for k in ("sgd", "adam"))
    assert adam < sgd
    t = make_tuner(name, RULE)
    assert t.beta == sgd  # before any report (and for a client that does not say): SGD's
    tell(t, [-1.0], steps=1, optimizer="adam")
    assert t.optimizer == "adam" and t.beta == adam and t.lr == pytest.approx(0.1 + adam)
    assert t.state_dict()["beta0"] == adam
    t = make_tuner(name, RULE)
    tell(t, [-1.0], steps=1, optimizer="sgd")
    assert t.beta == sgd and t.lr == pytest.approx(0.1 + sgd)
    t = make_tuner(name, {**RULE, "beta": 0.5})  # a beta the user set is kept
    tell(t, [-0.1], steps=1, optimizer="adam")
    assert t.beta == 0.5 and t.lr == pytest.approx(0.15)
    with pytest.raises(ValueError, match="optimizer"):
        Observation.from_body({"step": 1, "hypergrad": {"h": [1.0], "optimizer": "rmsprop"}})
    assert Observation.from_body({"step": 1, "hypergrad": {"h": [1.0], "optimizer": "adam"}}
                                 ).hypergrad["optimizer"] == "adam"


def test_the_lr_at_most_doubles_or_halves_per_doubling_steps():
    t = make_tuner("hd", {**JOB, "beta": 1.0})  # default doubling_steps: 10
    tell(t, [-1.0] * 10)  # the bare rule would reach 10.1
    assert t.lr == pytest.approx(0.2) and t.limited == 1
    tell(t, [-0.01] * 5)  # 5 steps: at most 2 ** 0.5; the bare rule gives 0.25
    assert t.lr == pytest.approx(0.25) and t.limited == 1
    tell(t, [1.0] * 10)  # the bare rule would hit lr_min (0): at most halved
    assert t.lr == pytest.approx(0.125) and t.limited == 2
    tell(t, [0.005] * 10)  # within the limits: the bare rule
    assert t.lr == pytest.approx(0.075) and t.limited == 2
    t = make_tuner("hd", {**JOB, "beta": 1.0, "lr_min": 0.001, "lr": 0.002})
    tell(t, [1.0] * 10)  # halving stops at lr_min
    assert t.lr == pytest.approx(0.001)
    t = make_tuner("hd", {**JOB, "beta": 1e-3, "doubling_steps": None})
    tell(t, [1e3] * 10)  # at lr_min = 0 (no limit)
    t.doubling_steps = 10.0
    tell(t, [-1e3] * 10)  # from below a tenth of the initial LR: back to that, then doubling
    assert t.lr == pytest.approx(0.02)
    t = make_tuner("marthe", {**JOB, "beta": 1.0, "doubling_steps": 20})
    tell(t, [-1.0], steps=10)
    assert t.lr == pytest.approx(0.1 * 2 ** 0.5)


def test_a_blown_up_loss_lowers_lr_max_to_half_the_lr_it_ran_at():
    t = make_tuner("hd", {**RULE, "beta": 0.0})
    assert t.lr_max == pytest.approx(100 * 0.1)
    tell(t, [0.0] * 10, losses=[2.0] * 10)  # the first segment: the reference
    tell(t, [0.0] * 10, losses=[3.9] * 10)  # below twice the first: noise, nothing happens
    assert t.lr_max == pytest.approx(10.0) and t.ceilings == 0
    t.lr = 0.8  # as if hd had climbed
    tell(t, [0.0] * 10, losses=[1.0] * 9 + [40.0])  # mean 4.9 > 2 * 2.0
    assert t.lr_max == pytest.approx(0.4) and t.lr == pytest.approx(0.4) and t.ceilings == 1
    assert t.ask()[0] == actions.set_lr(0.4) and t.lr_bounds() == (0.0, 0.4)
    tell(t, [0.0] * 10, losses=[1.0, math.nan] + [1.0] * 8)  # non-finite: again
    assert t.lr_max == pytest.approx(0.2) and t.ceilings == 2
    tell(t, [-1e9] * 10)  # hyper steps stay under the lowered ceiling
    assert t.lr == pytest.approx(0.2)
    again = make_tuner("hd", {**RULE, "beta": 0.0})
    again.load_state_dict(json.loads(json.dumps(t.state_dict())))
    assert (again.lr_max, again.first_loss, again.ceilings) == (t.lr_max, 2.0, 2)
    # A negative loss (a log-likelihood objective): "twice" is first + |first|.
    t = make_tuner("hd", {**RULE, "beta": 0.0})
    tell(t, [0.0], steps=1, losses=[-5.0])
    tell(t, [0.0], steps=1, losses=[-0.5])
    assert t.ceilings == 0
    tell(t, [0.0], steps=1, losses=[0.5])
    assert t.ceilings == 1
