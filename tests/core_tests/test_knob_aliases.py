"""One spelling of LR bounds: every tuner documents lr_min/lr_max. The autolrs tuner's former
min_lr/max_lr still work, with a deprecation note for the client (its warning: see
tests/integration_tests/test_e2e_knob_aliases.py)."""

from __future__ import annotations

import pytest

from autolrs.errors import ConfigError
from autolrs.tuners import TUNERS, make_tuner
from autolrs.wire import messages

BOUNDS = {"tau": 40, "k": 3, "initial_lr": 0.1}


@pytest.mark.parametrize("name", sorted(TUNERS))
def test_no_tuner_documents_min_lr_or_max_lr(name):
    cls = TUNERS[name]
    public = {cls.public_name(key) for key in cls.defaults}
    assert not public & {"min_lr", "max_lr"}, public


def test_new_and_old_names_build_the_same_tuner():
    new = make_tuner("autolrs", {**BOUNDS, "lr_min": 0.002, "lr_max": 0.5})
    old = make_tuner("autolrs", {**BOUNDS, "min_lr": 0.002, "max_lr": 0.5})
    assert new.interval == old.interval == (0.002, 0.5)
    assert new.ask() == old.ask() and new.deprecations == []
    assert old.deprecations == ["autolrs: option 'min_lr' is deprecated; use 'lr_min'",
                                "autolrs: option 'max_lr' is deprecated; use 'lr_max'"]


def test_auto_bounds_under_the_new_names():
    tuner = make_tuner("autolrs", {**BOUNDS, "lr_min": "auto", "lr_max": 1.0, "max_steps": 600})
    assert tuner.auto == {"lr_min": True, "lr_max": False}


def test_both_spellings_at_once_is_a_config_error():
    with pytest.raises(ConfigError, match="given twice"):
        make_tuner("autolrs", {**BOUNDS, "lr_min": 0.001, "min_lr": 0.001})


def test_unknown_option_lists_the_documented_names():
    with pytest.raises(ConfigError) as err:
        make_tuner("autolrs", {"lr_mni": 0.1})
    valid = str(err.value).split("valid: ")[1]
    assert "lr_min" in valid and "lr_max" in valid and "min_lr" not in valid


def test_server_default_and_job_config_are_the_same_knob_under_either_name(tmp_path):
    from autolrs.server.config import job_tuner_config, load_config

    path = tmp_path / "server.yaml"
    path.write_text("tuners:\n  autolrs: {min_lr: 0.001, max_lr: 0.1}\n")
    config = load_config(path)
    merged = job_tuner_config(config, "autolrs", {"lr_max": 0.5}, {"initial_lr": 0.1})
    assert merged["lr_min"] == 0.001 and merged["lr_max"] == 0.5 and "max_lr" not in merged
    path.write_text("tuners:\n  autolrs: {lr_min: 0.001, min_lr: 0.002}\n")
    with pytest.raises(ConfigError, match="given twice"):
        load_config(path)


def test_deprecations_are_absent_from_a_hello_reply_without_old_names():
    assert "deprecations" not in messages.HelloReply([{"op": "stop", "reason": "x"}]).to_body()
