"""Schedule tuners reproduce torch.optim.lr_scheduler bit for bit (torch is used only here)."""

import pytest
import torch

from autolrs.actions import Observation
from autolrs.testing import SimulatedClient
from autolrs.tuners import ConfigError, make_tuner

from autolrs.testing.training import torch_scheduler_lrs

CASES = [
    ("step", {"step_size": 7, "gamma": 0.3},
     lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.3)),
    ("exponential", {"gamma": 0.97},
     lambda opt: torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.97)),
    ("cosine", {"T_0": 5, "T_mult": 2, "eta_min": 0.001},
     lambda opt: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=5, T_mult=2, eta_min=0.001)),
    ("cosine", {"T_0": 9, "T_mult": 1},
     lambda opt: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=9, T_mult=1)),
]


@pytest.mark.parametrize("chunk", [1, 11, 500])
@pytest.mark.parametrize("name, knobs, make_scheduler", CASES)
def test_schedule_matches_torch_exactly(name, knobs, make_scheduler, chunk):
    tuner = make_tuner(name, {**knobs, "chunk": chunk, "initial_lr": 0.1, "max_steps": 200})
    client = SimulatedClient(initial_lr=0.1).drive(tuner)
    assert client.lr_history == torch_scheduler_lrs(make_scheduler, 0.1, 200)


def test_late_report_keeps_the_schedule_aligned():
    tuner = make_tuner("cosine", {"T_0": 10, "chunk": 4, "initial_lr": 0.1})
    client = SimulatedClient()
    tuner.tell(client.execute(tuner.ask()))
    client.step = 9  # the client ran on while its report was delayed
    plan = tuner.ask()
    assert plan[-1]["start_step"] == 4
    tuner.tell(Observation(step=9))
    assert tuner.ask()[-1]["start_step"] == 9
    expected = torch_scheduler_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=10), 0.1, 13)
    assert tuner.ask()[-1]["lrs"] == expected[9:13]


def test_lr_knob_overrides_the_optimizer_lr():
    tuner = make_tuner("constant", {"lr": 0.5, "initial_lr": 0.1})
    assert tuner.ask()[-1]["lrs"][0] == 0.5


@pytest.mark.parametrize("name, knobs", [
    ("cosine", {"T_0": 0}), ("cosine", {"eta_min": 1.0}), ("step", {"gamma": -1}),
    ("step", {"step_size": 2.5}), ("exponential", {"gamma": "fast"}), ("constant", {"chunk": 0}),
])
def test_bad_knobs_are_config_errors(name, knobs):
    with pytest.raises(ConfigError):
        make_tuner(name, {**knobs, "initial_lr": 0.1})


def test_no_lr_anywhere_is_a_config_error():
    with pytest.raises(ConfigError, match="lr"):
        make_tuner("constant", {})


def test_yaml_style_numeric_strings_are_accepted():
    tuner = make_tuner("exponential", {"gamma": "0.5", "lr": "1e-3"})
    assert tuner.ask()[-1]["lrs"][:2] == [1e-3, 1e-3 * 0.5]
