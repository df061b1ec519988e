"""The record tuner: logs a run the client drives itself and never sends an LR."""

import math

import pytest

from autolrs import actions
from autolrs.actions import Observation
from autolrs.testing import SimulatedClient
from autolrs.tuners import ConfigError, make_tuner


def test_plans_only_run_and_stop_at_the_budget():
    tuner = make_tuner("record", {"chunk": 40, "max_steps": 100, "initial_lr": 0.1})
    client = SimulatedClient(initial_lr=0.1).drive(tuner)
    assert client.stopped and client.step == 100
    assert [len(p) for p in client.plans] == [1, 1, 1, 1]
    assert [p[0]["steps"] for p in client.plans[:3]] == [40, 40, 20]
    assert actions.plan_lrs([a for p in client.plans for a in p]) == []  # the LR is the client's
    assert client.lr == 0.1


def test_trace_holds_segment_means_and_validation_at_global_steps():
    tuner = make_tuner("record", {"chunk": 4, "eval_every": 2, "has_val_fn": True})
    tuner.tell(Observation(step=4, steps=4, losses=[1.0, 2.0, 3.0, 6.0], evals=[(2, 0.9), (4, 0.8)]))
    tuner.tell(Observation(step=8, steps=4, losses=[1.0, math.nan, 1.0, 1.0], evals=[(2, 0.7), (4, 0.75)]))
    assert tuner.ask() == [actions.run(4, 8, eval_every=2)]
    s = tuner.summary()
    assert s["trace"]["loss"][0] == [4, 3.0]
    assert s["trace"]["loss"][1][0] == 8 and math.isnan(s["trace"]["loss"][1][1])  # divergence stays visible
    assert s["trace"]["val"] == [[2, 0.9], [4, 0.8], [6, 0.7], [8, 0.75]]
    assert s["best_val"] == 0.7


def test_records_the_interval_it_was_given():
    tuner = make_tuner("record", {"lr_min": 1e-4, "lr_max": 1.0, "interval_source": "range test"})
    assert tuner.lr_bounds() == (1e-4, 1.0)
    assert tuner.summary()["interval_source"] == "range test"


@pytest.mark.parametrize("bad", [
    {"chunk": 0}, {"chunk": 20_000}, {"eval_every": -1}, {"eval_every": 5},  # no val_fn
    {"lr_min": 1.0, "lr_max": 0.1}, {"lr_min": 1e-3}, {"interval_source": 3},
])
def test_bad_config_is_a_clear_error(bad):
    with pytest.raises(ConfigError):
        make_tuner("record", bad)
