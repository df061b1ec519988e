"""The callback's public API beyond step(): get_last_lr, summary (from the goodbye reply),
state_dict/load_state_dict, and the deprecation notes a hello reply may carry."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from autolrs.actions import run, set_lr, stop
from autolrs.callbacks import AutoLRS, AutoLRSDeprecationWarning, AutoLRSWarning
from autolrs.callbacks.callback import STATE_VERSION
from autolrs.testing.peer import ScriptedTuner, kind_of
from autolrs.testing.training import DigitsBatches, make_mlp, train_step
from autolrs.wire import protocol
from callbacks_testlib import peer  # noqa: F401  (fixture)


def two_groups(model, lr0=0.1, lr1=0.01):
    return torch.optim.SGD([{"params": model[0].parameters(), "lr": lr0},
                            {"params": model[-1].parameters(), "lr": lr1}], lr=lr0)


def test_get_last_lr_lists_every_group_like_torch_schedulers(peer):
    p = peer(ScriptedTuner([[set_lr(0.05), run(2, 0)], [run(2, 2, lrs=[0.2, 0.3])]]))
    model = make_mlp()
    optimizer = two_groups(model)
    with AutoLRS(model, optimizer, server=p.endpoint, job="last-lr", timeout=2.0) as cb:
        assert cb.get_last_lr() == [0.05, pytest.approx(0.005)]
        batches = DigitsBatches()
        for _ in range(3):
            cb.step(train_step(model, optimizer, batches))
        assert cb.get_last_lr() == [0.3, pytest.approx(0.03)] == [g["lr"] for g in optimizer.param_groups]
        assert all(type(lr) is float for lr in cb.get_last_lr())


def test_get_last_lr_of_a_tensor_lr_is_floats(peer):
    p = peer(ScriptedTuner([[set_lr(0.002), run(5, 0)]]))
    model = make_mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=torch.tensor(0.001), foreach=False)
    with AutoLRS(model, optimizer, server=p.endpoint, job="tensor-lr", timeout=2.0) as cb:
        assert cb.get_last_lr() == [pytest.approx(0.002)] and type(cb.get_last_lr()[0]) is float


def test_summary_comes_with_the_goodbye_reply(peer):
    p = peer(ScriptedTuner([[run(2, 0)]], summary={"best_lr": 0.1, "done": "completed"}))
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with AutoLRS(model, optimizer, server=p.endpoint, job="with-summary", timeout=2.0) as cb:
        cb.step(1.0)
        assert cb.summary is None
    assert cb.summary == {"best_lr": 0.1, "done": "completed"}
    assert [kind_of(r) for r in p.received] == ["hello", "goodbye"]


def test_summary_is_none_when_the_goodbye_goes_unanswered(peer):
    p = peer(ScriptedTuner([[run(100, 0)]], summary={"x": 1}))
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    cb = AutoLRS(model, optimizer, server=p.endpoint, job="no-summary", timeout=2.0)
    p.silent = True
    cb.close(timeout=0.2)
    assert cb.summary is None and p.requests("goodbye")


def test_state_dict_is_plain_versioned_data(peer):
    p = peer(ScriptedTuner([[set_lr(0.05), run(3, 0)]]))
    model = make_mlp()
    optimizer = two_groups(model)
    with AutoLRS(model, optimizer, tuner="cosine", config={"T_0": 7}, server=p.endpoint, job="sd-job",
                 timeout=2.0) as cb:
        for _ in range(2):
            cb.step(1.0)
        state = cb.state_dict()
    assert json.loads(json.dumps(state)) == state  # plain data: fits any checkpoint
    assert state["version"] == STATE_VERSION == 2
    assert state["credential"] is None  # this scripted peer issues none; a real server does
    hello = p.requests("hello")[0]
    assert state["job"] == "sd-job" and state["client_id"] == hello["client_id"] and state["seq"] == 1
    assert state["step"] == 2 and state["tuner"] == "cosine" and state["config"] == {"T_0": 7}
    assert state["stopped"] is False and state["lrs"]["base"] == 0.05
    assert state["lrs"]["ratios"] == [1.0, pytest.approx(0.1)]


def test_load_state_dict_takes_the_job_over_at_its_step_as_a_new_client(peer):
    script = ScriptedTuner([[run(50, 0)], lambda req: [set_lr(0.07), run(5, req["body"]["step"])]])
    p = peer(script)
    model = make_mlp()
    optimizer = two_groups(model)
    saved = {"version": 1, "job": "old-job", "client_id": "f" * 32, "seq": 9, "step": 120, "skipped_steps": 2,
             "reports": 11, "stopped": False, "tuner": "constant", "config": {},
             "lrs": {"base": 0.2, "initial": 0.1, "initial_lrs": [0.1, 0.01], "ratios": [1.0, 0.1]},
             "later": "a field of a later version: ignored"}
    with AutoLRS(model, optimizer, server=p.endpoint, timeout=2.0) as cb:
        first_job = cb.job
        cb.load_state_dict(saved)
        assert cb.job == "old-job" and cb.global_step == 120 and cb.skipped_steps == 2 and cb.reports == 11
        assert cb.lr == 0.07 and cb.get_last_lr() == [0.07, pytest.approx(0.007)]
    kinds = [(kind_of(r), r["job_id"], r["body"].get("step"), r["body"].get("reason")) for r in p.received]
    assert kinds == [("hello", first_job, 0, None), ("goodbye", first_job, 0, "replaced"),
                     ("hello", "old-job", 120, None), ("goodbye", "old-job", 120, "done")]
    restored_hello = p.requests("hello")[1]
    assert restored_hello["client_id"] != saved["client_id"] and restored_hello["seq"] == 0


def test_load_state_dict_of_a_stopped_job_asks_nothing(peer):
    p = peer(ScriptedTuner([[run(50, 0)]]))
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with AutoLRS(model, optimizer, server=p.endpoint, job="stopped-job", timeout=2.0) as cb:
        state = cb.state_dict()
        state.update(step=30, stopped=True)
        cb.load_state_dict(state)
        assert cb.should_stop and cb.global_step == 30 and cb.online
    assert [kind_of(r) for r in p.received] == ["hello", "goodbye"]


@pytest.mark.parametrize("change, match", [
    ({"version": 3}, "version"), ({"version": "1"}, "version"), ({"job": "../x"}, "job id"),
    ({"step": -1}, "step"), ({"tuner": "cosine"}, "tuner"), ({"config": {"lr": 1}}, "config"),
    ({"lrs": {"base": 0.1}}, "'ratios'|ratios"),
])
def test_load_state_dict_refuses_a_bad_state_and_changes_nothing(peer, change, match):
    p = peer(ScriptedTuner([[run(50, 0)]]))
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with AutoLRS(model, optimizer, server=p.endpoint, job="keep-me", timeout=2.0) as cb:
        cb.step(1.0)
        state = {**cb.state_dict(), **change}
        with pytest.raises((ValueError, KeyError), match=match):
            cb.load_state_dict(state)
        assert cb.job == "keep-me" and cb.global_step == 1 and cb.state_dict()["lrs"]["base"] == 0.1
    assert [kind_of(r) for r in p.received] == ["hello", "goodbye"]


def test_deprecation_notes_of_the_hello_reply_warn_at_the_users_line(peer):
    def handler(req):
        if kind_of(req) == "hello":
            return protocol.ok_reply(req, {"plan": [stop("x")], "resumed": False, "seed": 1,
                                           "deprecations": ["autolrs: option 'min_lr' is deprecated; use 'lr_min'"]})
        return protocol.ok_reply(req, {})

    p = peer(handler)
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        AutoLRS(model, optimizer, server=p.endpoint, job="old-knobs", timeout=2.0).close()
    notes = [w for w in caught if issubclass(w.category, AutoLRSDeprecationWarning)]
    assert len(notes) == 1 and "lr_min" in str(notes[0].message) and notes[0].filename == __file__
    assert issubclass(AutoLRSDeprecationWarning, DeprecationWarning) and issubclass(AutoLRSDeprecationWarning,
                                                                                    AutoLRSWarning)
