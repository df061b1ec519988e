"""The server's LR rule for hd, rtho and marthe, and the protocol fields they use."""

import math

import pytest

from autolrs import actions
from autolrs.wire import protocol
from autolrs.actions import Observation
from autolrs.tuners import ConfigError, make_tuner

# The rules alone, told reports of any shape (tests/core_tests/test_guard.py has the guard's).
JOB = {"initial_lr": 0.1, "max_steps": 1000, "has_val_fn": True, "guard": False}


def tell(tuner, hs, vb=None, step=None):
    step = tuner.step + len(hs) if step is None else step
    tuner.tell(Observation(step=step, steps=len(hs), losses=[1.0] * len(hs),
                           hypergrad={"h": list(hs), "vb": vb, "val_loss": 1.0}))


def test_hd_applies_every_step_in_order_with_clipping_and_clamping():
    t = make_tuner("hd", {**JOB, "beta": 0.01, "clip": 2.0, "lr_max": 0.5})
    plan = t.ask()
    assert plan[0] == actions.set_lr(0.1) and plan[-1]["hypergrad"] == {"method": "hd"}
    assert plan[-1]["steps"] == 10 and "hypergrad" in plan[-1]["collect"]
    tell(t, [-1.0, -3.0])  # -3 is clipped to -2
    assert t.lr == pytest.approx(0.1 + 0.01 + 0.02) and t.clipped == 1
    tell(t, [-1e300] * 3)  # huge but finite: clipped to -2 each
    assert t.lr == pytest.approx(0.19) and t.clipped == 4
    t = make_tuner("hd", {**JOB, "beta": 0.01, "lr_max": 0.5})
    tell(t, [-1e300, -1e308])
    assert t.lr == 0.5  # lr_max
    tell(t, [1e308] * 3)
    assert t.lr == 0.0  # lr_min, never negative
    assert t.ask()[0] == actions.set_lr(0.0)


def test_non_finite_hypergradients_are_skipped_and_counted():
    t = make_tuner("hd", {**JOB, "beta": 0.01})
    tell(t, [math.nan, math.inf, -math.inf, -1.0])
    assert t.skipped == 3 and t.applied == 1 and t.lr == pytest.approx(0.11)
    tell(t, [])  # a segment without the hypergradient keeps the LR
    assert t.missing == 1 and t.lr == pytest.approx(0.11)


def test_beta_follows_the_product_of_successive_hypergradients():
    t = make_tuner("hd", {**JOB, "beta": 0.01, "alpha": 0.001})
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
