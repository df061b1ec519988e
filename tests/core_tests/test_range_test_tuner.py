"""The ``range_test`` tuner: sweep plans, smoothing and divergence on scripted curves, the end."""

import math

import pytest

from autolrs import actions, lr_curve
from autolrs.actions import Observation
from autolrs.testing import SimulatedClient
from autolrs.tuners import ConfigError, make_tuner

JOB = {"initial_lr": 0.01, "max_steps": None, "has_val_fn": False}


def build(**knobs):
    return make_tuner("range_test", {**JOB, **knobs})


class Scripted:
    """Drives the tuner with a fixed loss per sweep step (index = steps run so far)."""

    def __init__(self, losses, val=False):
        self.losses, self.val = list(losses), val
        self.step, self.plans, self.lrs = 0, [], []

    def drive(self, tuner, max_reports=1000):
        for _ in range(max_reports):
            plan = tuner.ask()
            actions.validate_plan(plan)
            self.plans.append(plan)
            run = plan[-1]
            if run["op"] == "stop":
                return self
            values = []
            for lr in run["lrs"]:
                self.lrs.append(lr)
                values.append(self.losses[self.step])
                self.step += 1
            if self.val:
                obs = Observation(self.step, run["steps"], [], [(i + 1, v) for i, v in enumerate(values)])
            else:
                obs = Observation(self.step, run["steps"], values, [])
            tuner.tell(obs)
        raise AssertionError("the tuner never stopped")


@pytest.mark.parametrize("mode", ["exp", "linear"])
@pytest.mark.parametrize("chunk", [1, 7, 100])
def test_lr_sequence_is_the_sweep_formula(mode, chunk):
    tuner = build(start_lr=1e-5, end_lr=1.0, num_iter=30, step_mode=mode, chunk=chunk, diverge_th=None)
    client = SimulatedClient(seed=0).drive(tuner)
    assert client.lr_history == lr_curve.sweep_lrs(1e-5, 1.0, 30, mode)
    assert tuner.history["lr"] == client.lr_history
    assert len(client.plans) == math.ceil(30 / chunk) + 1
    assert client.plans[0][0] == actions.checkpoint("range_test")
    assert all(p[-1]["op"] == "run" and p[-1]["steps"] <= chunk for p in client.plans[:-1])
    assert client.plans[-1] == [actions.restore("range_test"), actions.discard("range_test"), actions.set_lr(0.01),
                                actions.stop("range_test completed")]


def test_start_lr_defaults_to_the_optimizer_lr():
    client = SimulatedClient().drive(build(num_iter=5, end_lr=10.0))
    assert client.lr_history == lr_curve.sweep_lrs(0.01, 10.0, 5)


def test_history_is_smoothed_like_torch_lr_finder():
    raw = [3.0, 2.5, 2.0, 1.8, 1.2, 1.0, 1.1, 0.9, 1.0, 1.3]
    tuner = build(start_lr=1e-4, end_lr=1.0, num_iter=10, chunk=3, smooth_f=0.2)
    Scripted(raw).drive(tuner)
    assert tuner.history["loss"] == raw
    assert tuner.history["smoothed"] == lr_curve.smooth(raw, 0.2)
    assert tuner.done == "completed"


@pytest.mark.parametrize("chunk", [1, 4, 10])
def test_divergence_stops_at_the_next_chunk_boundary(chunk):
    # smooth_f 0: the smoothed loss is the raw one; best 1.0; 5 x best is crossed at index 12.
    raw = [2.0, 1.5, 1.0] + [1.2 + 0.3 * i for i in range(9)] + [6.0] + [50.0] * 30
    tuner = build(start_lr=1e-4, end_lr=10.0, num_iter=40, chunk=chunk, smooth_f=0.0, diverge_th=5.0)
    driver = Scripted(raw).drive(tuner)
    assert tuner.done == "diverged"
    assert len(tuner.history["lr"]) == 13  # the diverged point is recorded, nothing after it
    assert tuner.history["loss"][-1] == 6.0
    # The client ran to the end of the chunk holding step 12: fewer than `chunk` steps past it.
    assert driver.step == math.ceil(13 / chunk) * chunk
    assert driver.step - 13 < chunk
    assert driver.plans[-1][-1] == actions.stop("range_test diverged")


def test_smoothed_divergence_and_nan():
    raw = [1.0] * 5 + [30.0] * 10
    tuner = build(start_lr=1e-4, end_lr=10.0, num_iter=15, chunk=1, smooth_f=0.5, diverge_th=5.0)
    Scripted(raw).drive(tuner)
    smoothed = lr_curve.smooth(raw, 0.5)
    first = next(i for i, s in enumerate(smoothed) if s > 5.0)
    assert len(tuner.history["smoothed"]) == first + 1
    tuner = build(start_lr=1e-4, end_lr=10.0, num_iter=15, chunk=1, diverge_th=None)
    Scripted([1.0, 0.9, math.nan] + [1.0] * 12).drive(tuner)
    assert tuner.done == "diverged" and len(tuner.history["lr"]) == 3


def test_val_mode_records_the_evaluations_every_step():
    raw = [3.0 - 0.1 * i for i in range(12)]
    tuner = make_tuner("range_test", {**JOB, "has_val_fn": True, "val": True, "num_iter": 12, "chunk": 5})
    driver = Scripted(raw, val=True).drive(tuner)
    run = driver.plans[0][-1]
    assert run["eval_every"] == 1 and run["collect"] == []
    assert tuner.history["loss"] == raw
    with pytest.raises(ConfigError, match="val_fn"):
        build(val=True)


def test_suggestions_and_apply_suggestion():
    lrs = lr_curve.sweep_lrs(1e-5, 10.0, 60)
    raw = [2.3 - 1.2 / (1 + math.exp(-(math.log10(lr) + 2) * 3)) + max(0.0, math.log10(lr) + 0.5) ** 2
           for lr in lrs]
    for method in lr_curve.METHODS:
        tuner = build(start_lr=1e-5, end_lr=10.0, num_iter=60, chunk=16, method=method, apply_suggestion=True,
                      diverge_th=None)
        driver = Scripted(raw).drive(tuner)
        expected = lr_curve.suggest(lrs, lr_curve.debiased(raw, 0.05), method)  # the bias-corrected curve
        assert tuner.suggestions[method] == expected and expected["lr"] is not None
        assert driver.plans[-1][2] == actions.set_lr(expected["lr"])
        summary = tuner.summary()
        assert summary["suggested_lr"] == expected["lr"]
        assert summary["history"]["lr"] == lrs and set(summary["suggestions"]) == set(lr_curve.METHODS)
        lo, hi = tuner.lr_bounds()
        assert lo <= expected["lr"] <= hi


def test_short_curve_restores_the_initial_lr_and_reports_why():
    tuner = build(start_lr=1e-4, end_lr=1.0, num_iter=8, apply_suggestion=True, method="steepest")
    driver = Scripted([1.0] * 8).drive(tuner)
    assert tuner.suggestions["steepest"]["lr"] is None and "need at least" in tuner.suggestions["steepest"]["reason"]
    assert driver.plans[-1][2] == actions.set_lr(0.01)


def test_max_steps_ends_the_sweep():
    tuner = make_tuner("range_test", {**JOB, "max_steps": 25, "num_iter": 100, "chunk": 10})
    client = SimulatedClient().drive(tuner)
    assert len(client.lr_history) == 25 and tuner.done == "max_steps"
    assert client.lr_history == lr_curve.sweep_lrs(0.01, 10.0, 100)[:25]


def test_late_client_losses_map_to_the_last_lrs():
    tuner = build(start_lr=1e-3, end_lr=1.0, num_iter=10, chunk=5)
    tuner.ask()
    tuner.tell(Observation(step=5, steps=3, losses=[1.0, 2.0, 3.0]))  # the first 2 steps were missed
    assert tuner.history["lr"] == lr_curve.sweep_lrs(1e-3, 1.0, 10)[2:5]
    assert tuner.ask()[-1]["start_step"] == 5


@pytest.mark.parametrize("knobs, match", [
    ({"num_iter": 1}, "num_iter"),
    ({"step_mode": "cos"}, "step_mode"),
    ({"smooth_f": 1.0}, "smooth_f"),
    ({"method": "fastest"}, "method"),
    ({"apply_suggestion": "yes"}, "apply_suggestion"),
    ({"end_lr": 0}, "end_lr"),
])
def test_bad_knobs(knobs, match):
    with pytest.raises(ConfigError, match=match):
        build(**knobs)
