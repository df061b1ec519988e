"""The loss_diff tuner's plans and its account, fed scripted observations (no torch, no server)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from autolrs import actions
from autolrs.wire import protocol
from autolrs.actions import Observation
from autolrs.tuners import ConfigError, make_tuner

JOB = {"initial_lr": 0.05, "max_steps": None, "has_val_fn": False, "has_probe_fn": True}


def tuner(**config):
    return make_tuner("loss_diff", {**JOB, "lr_min": 0.001, "lr_max": 1.0, "num_evals": 4, "num_subsamples": 3,
                                    **config})


def report(step, probes=()):
    """A report as it comes off the wire."""
    body = protocol.loads(protocol.dumps(Observation(step=step, steps=1, probes=list(probes)).to_body()))
    return Observation.from_body(body)


def test_plans_checkpoint_then_probe_each_subsample_then_restore():
    t = tuner()
    assert t.lrs == pytest.approx([0.001, 0.01, 0.1, 1.0])
    first = t.ask()
    assert [a["op"] for a in first] == ["checkpoint", "run"] and first[-1]["collect"] == []
    t.tell(report(1))
    rows = [[-0.1, -0.2, -0.5, 3.0], [-0.1, -0.3, -0.4, math.inf], [-0.2, -0.2, -0.6, 1.0]]
    for j, row in enumerate(rows):
        plan = t.ask()
        assert plan[0] == actions.probe("loss_diff", t.lrs) and plan[1]["op"] == "run"
        assert plan[1]["start_step"] == j + 1
        before = 2.0 + j
        t.tell(report(j + 2, [[before, before + d] for d in row]))
    final = t.ask()
    assert final == [actions.restore("loss_diff"), actions.discard("loss_diff"), actions.set_lr(0.05),
                     actions.stop("loss_diff completed")]
    s = t.summary()
    assert s["done"] == "completed" and s["before"] == [2.0, 3.0, 4.0]
    assert np.allclose(np.array(s["deltas"])[:, :3], np.array(rows)[:, :3])
    assert s["deltas"][1][3] == math.inf
    assert s["best_lr"] == pytest.approx(0.1) and s["best"]["max"]["lr"] == pytest.approx(0.1)
    assert s["stats"]["mean"][0] == pytest.approx(np.mean([-0.1, -0.1, -0.2]))


def test_apply_best_sets_the_chosen_lr_after_the_restore():
    t = tuner(apply_best=True, method="median", num_subsamples=1)
    t.tell(report(1))
    t.tell(report(2, [[1.0, 0.9], [1.0, 0.5], [1.0, 0.7], [1.0, 5.0]]))
    plan = t.ask()
    assert plan[2] == actions.set_lr(t.lrs[1]) and plan[-1]["op"] == "stop"
    lo, hi = t.lr_bounds()
    assert all(lo <= lr <= hi for lr in actions.plan_lrs(plan))


def test_missing_probe_results_are_retried_then_given_up():
    t = tuner(num_subsamples=2)
    t.tell(report(1))
    t.tell(report(2))  # the client could not probe: same subsample again
    assert t.ask()[0]["op"] == "probe" and t.summary()["subsamples"] == 0
    t.tell(report(3, [[1.0, 0.5]] * 4))
    assert t.summary()["subsamples"] == 1
    for step in (4, 5, 6):
        t.tell(report(step, [[1.0, 0.5]] * 2))  # wrong width counts as missing
    assert t.summary()["done"] == "no_probes" and t.ask()[-1]["op"] == "stop"


def test_max_steps_caps_the_subsamples():
    t = tuner(num_subsamples=50, max_steps=4)
    assert t.summary()["num_subsamples"] == 3
    with pytest.raises(ConfigError, match="max_steps"):
        tuner(max_steps=1)


def test_state_round_trips_through_the_wire_mid_run():
    t = tuner()
    t.tell(report(1))
    t.tell(report(2, [[1.0, 0.9], [1.0, 0.8], [1.0, 0.7], [1.0, math.nan]]))
    resumed = tuner()
    resumed.load_state_dict(protocol.loads(protocol.dumps(t.state_dict())))
    assert resumed.ask() == t.ask() and resumed.summary() == t.summary()


@pytest.mark.parametrize("config,match", [
    ({"has_probe_fn": False}, "probe_fn"),
    ({"lr_min": 1.0, "lr_max": 0.1}, "lr_min"),
    ({"spacing": "cubic"}, "spacing"),
    ({"method": "mode"}, "method"),
    ({"alpha": 0.0}, "alpha"),
    ({"num_subsamples": 0}, "num_subsamples"),
    ({"num_evals": 20_000}, "num_evals"),
    ({"apply_best": "yes"}, "apply_best"),
])
def test_bad_config_is_a_clear_error(config, match):
    with pytest.raises(ConfigError, match=match):
        tuner(**config)


def test_probe_action_and_report_field_are_validated():
    plan = [actions.probe("s", [0.1, 1.0]), actions.run(1, 0)]
    assert actions.validate_plan(plan) == plan and actions.plan_lrs(plan) == [0.1, 1.0]
    for bad in [{"op": "probe", "slot": "", "lrs": [0.1]}, {"op": "probe", "slot": "s", "lrs": []},
                {"op": "probe", "slot": "s", "lrs": [-1.0]}, {"op": "probe", "slot": "s"}]:
        with pytest.raises(ValueError, match="probe|LR"):
            actions.validate_plan([bad, actions.run(1, 0)])
    with pytest.raises(ValueError, match="probes"):
        Observation.from_body({"step": 1, "probes": [[1.0]]})
    assert "probes" not in Observation(step=1).to_body()  # reports without probes are unchanged
