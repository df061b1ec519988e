"""What a new user meets first on the server side: ``autolrs-server tuners`` lists every knob
from the mapping that also checks configs, every knob has a meaning, the log has one line per
job start, decision and end, and a launcher's lifeline stops the server."""

from __future__ import annotations

import json
import math

import pytest
import torch
from server_testlib import run_cli

from autolrs.callbacks import AutoLRS
from autolrs.errors import ConfigError
from autolrs.server import ServerProcess
from autolrs.testing.training import make_mlp
from autolrs.tuners import TUNERS, make_tuner


@pytest.mark.parametrize("name", list(TUNERS))
def test_every_knob_is_documented_and_is_what_configs_are_checked_against(name):
    cls = TUNERS[name]
    assert cls.knobs, f"{name} has no knobs mapping"
    for knob, (default, meaning) in cls.knobs.items():
        assert isinstance(meaning, str) and len(meaning.split()) >= 3, f"{name}.{knob}: {meaning!r}"
    assert cls.defaults == {knob: default for knob, (default, _) in cls.knobs.items()}
    with pytest.raises(ConfigError) as raised:
        make_tuner(name, {"initial_lr": 0.1, "max_steps": 100, "not_a_knob": 1})
    valid = str(raised.value).split("valid: ")[1].split(", ")
    # the facts the server fills in from the hello (JOB_KEYS) are not the user's: not listed
    assert sorted(valid) == sorted(cls.public_name(k) for k in cls.knobs)


def test_the_tuners_command_lists_every_knob_with_its_default_and_meaning():
    listed = json.loads(run_cli("tuners", "--json").stdout)
    assert [t["name"] for t in listed] == list(TUNERS)
    for tuner in listed:
        cls = TUNERS[tuner["name"]]
        assert {k["name"]: (k["default"], k["meaning"]) for k in tuner["knobs"]} == {
            cls.public_name(k): v for k, v in cls.knobs.items()}
    text = run_cli("tuners", "cosine").stdout.splitlines()
    assert text[0].startswith("cosine: SGDR")
    assert any(line.split()[:2] == ["T_0", "1000"] and "first cycle" in line for line in text)
    autolrs = run_cli("tuners", "autolrs").stdout
    assert "lr_min" in autolrs and "(formerly min_lr)" in autolrs
    unknown = run_cli("tuners", "nope")
    assert unknown.returncode == 2 and unknown.stderr.count("\n") == 1 and "nope" in unknown.stderr


def test_one_log_line_per_job_start_decision_and_end(tmp_path):
    with ServerProcess(tmp_path / "state") as server:
        model = make_mlp()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        with AutoLRS(model, optimizer, tuner="cosine", config={"T_0": 20, "chunk": 10, "guard": False}, server=server.endpoint,
                     job="logged", max_steps=30) as cb:
            while not cb.should_stop:
                optimizer.step()
                cb.step(torch.tensor(2.0))
        log = server.log().splitlines()
    lines = [line.split(": ", 1)[1] for line in log if "autolrs.server.dispatcher: job logged " in line]
    assert len(lines) == 1 + cb.reports + 1
    lr = [0.05 * (1 + math.cos(math.pi * (step % 20) / 20)) for step in range(30)]  # the cosine's LRs
    assert lines[0] == f"job logged started: tuner cosine at step 0 of 30; plan: run 10 steps, LR 0.1 -> {lr[9]:.4g}"
    assert lines[1] == (f"job logged step 10: mean loss 2 over 10 steps; plan: run 10 steps, "
                        f"LR {lr[10]:.4g} -> {lr[19]:.4g}")
    assert lines[-2] == "job logged step 30: mean loss 2 over 10 steps; plan: stop (max_steps)"
    assert lines[-1] == "job logged ended (done) at step 30"


def test_a_lifeline_stops_the_server_when_its_parent_lets_go(tmp_path):
    server = ServerProcess(tmp_path / "state", lifeline=True)
    try:
        assert server.alive
        server.proc.stdin.close()  # what the parent's death does to the pipe
        assert server.wait(30) == 0
        assert "standard input closed; stopping" in server.log()
    finally:
        server.close()
