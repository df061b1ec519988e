"""AutoLRS against a scripted peer: plans are carried out exactly, reports carry what happened."""

from __future__ import annotations

import math
import os
import re
import warnings

import pytest
import torch

from autolrs import actions
from autolrs.wire import protocol
from autolrs.actions import checkpoint, discard, evaluate, restore, run, set_lr, stop
from autolrs.callbacks import AutoLRS, AutoLRSConfigError, AutoLRSWarning, ServerUnavailableWarning
from autolrs.testing.bitwise import assert_bitwise_equal, snapshot
from autolrs.testing.peer import ScriptedTuner
from autolrs.testing.training import DigitsBatches, make_mlp, train_step, val_loss
from callbacks_testlib import peer  # noqa: F401  (fixture)


def two_group_sgd(model, lr0=0.1, lr1=0.01):
    return torch.optim.SGD([{"params": model[0].parameters(), "lr": lr0},
                            {"params": model[-1].parameters(), "lr": lr1}], lr=lr0, momentum=0.9)


def train(cb, model, optimizer, batches, n, lrs=None, losses=None):
    """Up to n steps (stops early on should_stop); records the LR each step trained with."""
    for _ in range(n):
        if lrs is not None:
            lrs.append([float(g["lr"]) for g in optimizer.param_groups])
        loss = train_step(model, optimizer, batches)
        if losses is not None:
            losses.append(loss.item())
        cb.step(loss)
        if cb.should_stop:
            break


def make(peer_endpoint, model, optimizer, **kw):
    kw.setdefault("timeout", 2.0)
    kw.setdefault("retry_interval", 0.05)
    return AutoLRS(model, optimizer, server=peer_endpoint, job=kw.pop("job", "test-job"), **kw)


def test_hello_body_and_default_job_id(peer):
    script = ScriptedTuner([[run(5, 0)]])
    p = peer(script)
    model = make_mlp()
    optimizer = two_group_sgd(model)
    cb = AutoLRS(model, optimizer, tuner="cosine", config={"T_0": 10}, server=p.endpoint, val_fn=lambda: 1.0,
                 timeout=2.0, max_steps=100, seed=7)
    cb.close()
    hello = script.applied[0]
    assert hello["type"] == "hello_request" and hello["seq"] == 0
    assert hello["body"] == {"tuner": "cosine", "config": {"T_0": 10}, "initial_lr": 0.1, "param_groups": 2,
                             "step": 0, "max_steps": 100, "has_val_fn": True, "seed": 7}
    assert protocol.is_valid_job_id(cb.job) and hello["job_id"] == cb.job
    assert re.search(rf"-{os.getpid()}-[0-9a-f]{{6}}$", cb.job), cb.job
    assert script.goodbyes[0]["body"] == {"step": 0, "reason": "done", "lr": 0.1}
    cb.close()  # idempotent
    assert len(script.goodbyes) == 1


def test_lrs_follow_the_plan_and_group_ratios_are_kept(peer):
    script = ScriptedTuner([
        [set_lr(0.05), run(3, 0, lrs=[0.1, 0.2, 0.3])],
        [run(2, 3)],  # no lrs: the last LR stays
        [set_lr(0.07), run(3, 5, lrs=[0.01, 0.01, 0.02])],
        [stop("budget")],
    ])
    p = peer(script)
    model = make_mlp()
    optimizer = two_group_sgd(model, 0.1, 0.01)
    lrs, losses = [], []
    with make(p.endpoint, model, optimizer) as cb:
        assert cb.lr == 0.1  # lrs[0] right away (after the plan's set_lr)
        train(cb, model, optimizer, DigitsBatches(), 20, lrs, losses)
        assert cb.should_stop and cb.global_step == 8
        batches = DigitsBatches()
        for _ in range(4):  # after stop: steps are only counted
            cb.step(train_step(model, optimizer, batches))
        assert cb.global_step == 12
        assert len(p.received) == 4  # hello + 3 reports, nothing after stop
    expected = [0.1, 0.2, 0.3, 0.3, 0.3, 0.01, 0.01, 0.02]
    assert [g[0] for g in lrs] == expected
    for g0, g1 in lrs:
        assert g1 == pytest.approx(g0 * 0.1, rel=1e-12)
    reports = script.reports()
    assert [(r["step"], r["steps"]) for r in reports] == [(3, 3), (5, 2), (8, 3)]
    assert [r["lr"] for r in reports] == [0.3, 0.3, 0.02]
    assert reports[0]["losses"] + reports[1]["losses"] + reports[2]["losses"] == losses  # exact floats
    assert all(type(x) is float for r in reports for x in r["losses"])
    assert all(r["evals"] == [] for r in reports)
    assert script.goodbyes[0]["body"] == {"step": 12, "reason": "done", "lr": 0.02}


@pytest.mark.parametrize("storage", ["memory", "disk"])
def test_checkpoint_restore_evaluate(peer, storage, tmp_path):
    script = ScriptedTuner([
        [checkpoint("start"), run(3, 0)],
        [restore("start"), set_lr(0.01), evaluate(), run(4, 3, eval_every=2)],
        [restore("start"), discard("start"), stop("done")],
    ])
    p = peer(script)
    model = make_mlp(batchnorm=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    initial = snapshot(model, optimizer)
    calls = []

    def val_fn():
        calls.append((snapshot(model, optimizer), float(optimizer.param_groups[0]["lr"])))
        return val_loss(model)

    with make(p.endpoint, model, optimizer, val_fn=val_fn, checkpoint=storage,
              checkpoint_dir=tmp_path if storage == "disk" else None) as cb:
        train(cb, model, optimizer, DigitsBatches(), 20)
        assert cb.should_stop and cb.global_step == 7
        # Both restores went back to step 0: steps 1-3, then 1-7, are off the training path.
        assert cb.discarded == [[0, 3], [0, 7]]
        # The final restore brought the initial state back (and the LR stays the plan's).
        assert_bitwise_equal(snapshot(model, optimizer)["model"], initial["model"])
        assert cb.lr == 0.01 and optimizer.param_groups[0]["lr"] == 0.01
    assert os.listdir(tmp_path) == []
    # evaluate ran right after the restore: the model and optimizer were the checkpoint's.
    first, lr_at_eval = calls[0]
    assert_bitwise_equal(first["model"], initial["model"])
    assert first["optimizer"]["state"] == {}
    assert lr_at_eval == 0.01
    assert len(calls) == 3
    report = script.reports()[1]
    assert report["steps"] == 4 and report["step"] == 7
    assert [pos for pos, _ in report["evals"]] == [0, 2, 4]
    assert all(isinstance(v, float) and math.isfinite(v) for _, v in report["evals"])


def test_loss_floats_none_and_collect(peer):
    script = ScriptedTuner([[run(3, 0)], [run(2, 3, collect=())]])
    p = peer(script)
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with make(p.endpoint, model, optimizer) as cb:
        cb.step(1.5)
        cb.step(None)
        cb.step(torch.tensor([2.5], dtype=torch.float64))
        cb.step(torch.tensor(3.0))
        cb.step(torch.tensor(4.0))
    first, second = script.reports()
    assert first["losses"] == [1.5, 2.5] and first["steps"] == 3
    assert second["losses"] == [] and second["steps"] == 2


def test_tensor_lr_is_filled_in_place(peer):
    script = ScriptedTuner([[run(2, 0, lrs=[0.003, 0.004])]])
    p = peer(script)
    model = make_mlp()
    lr = torch.tensor(0.001)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, foreach=False)
    with make(p.endpoint, model, optimizer) as cb:
        assert optimizer.param_groups[0]["lr"] is lr and float(lr) == pytest.approx(0.003)
        train(cb, model, optimizer, DigitsBatches(), 1)
        assert float(lr) == pytest.approx(0.004) and cb.lr == 0.004


def test_unknown_slot_and_missing_val_fn_warn_once(peer):
    script = ScriptedTuner([
        [restore("nope"), evaluate(), run(2, 0)],
        [restore("nope"), evaluate(), run(2, 2)],
    ])
    p = peer(script)
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with make(p.endpoint, model, optimizer) as cb:
            train(cb, model, optimizer, DigitsBatches(), 4)
    ours = [w for w in caught if issubclass(w.category, AutoLRSWarning)]
    assert len(ours) == 2, [str(w.message) for w in ours]
    assert any("'nope'" in str(w.message) for w in ours) and any("val_fn" in str(w.message) for w in ours)
    assert all(w.filename == __file__ for w in ours)  # pointed at the user's line
    first = script.reports()[0]
    assert first["evals"][0][0] == 0 and math.isnan(first["evals"][0][1])


def test_invalid_plan_warns_once_and_training_goes_on(peer):
    script = ScriptedTuner([[{"op": "run", "steps": 0, "start_step": 0}]])
    p = peer(script)
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with make(p.endpoint, model, optimizer) as cb:
            train(cb, model, optimizer, DigitsBatches(), 5)
            assert cb.lr == 0.1 and not cb.should_stop
    ours = [w for w in caught if issubclass(w.category, AutoLRSWarning)]
    assert len(ours) == 1 and "invalid plan" in str(ours[0].message)
    assert not issubclass(ours[0].category, ServerUnavailableWarning)
    assert [r["type"] for r in p.received] == ["hello_request", "goodbye_request"]


@pytest.mark.parametrize("code", ["unknown_tuner", "bad_config"])
def test_rejected_hello_raises_config_error_and_cleans_up(peer, code, tmp_path):
    p = peer(ScriptedTuner([], errors={0: code}))
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(AutoLRSConfigError, match=code):
        make(p.endpoint, model, optimizer, checkpoint="disk", checkpoint_dir=tmp_path)
    assert os.listdir(tmp_path) == []


def test_a_job_held_by_another_trainer_raises_at_the_first_step(peer, tmp_path):
    # The constructor cannot tell a second trainer from the job's own, restarting one (which
    # loads its credential after construction): the refusal is raised at the first step.
    p = peer(ScriptedTuner([], errors={0: "job_conflict"}))
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(AutoLRSConfigError, match="job_conflict.*load_state_dict"):
        with make(p.endpoint, model, optimizer, checkpoint="disk", checkpoint_dir=tmp_path) as cb:
            train(cb, model, optimizer, DigitsBatches(), 1)
    assert os.listdir(tmp_path) == [] and p.requests("goodbye") == []


def test_other_hello_errors_fail_open(peer):
    p = peer(ScriptedTuner([], errors={0: "bad_request"}))
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with make(p.endpoint, model, optimizer) as cb:
            train(cb, model, optimizer, DigitsBatches(), 3)
            assert cb.lr == 0.1
    assert len([w for w in caught if issubclass(w.category, AutoLRSWarning)]) == 1


def test_unknown_job_sends_a_fresh_hello_at_the_current_step(peer):
    script = ScriptedTuner([[run(3, 0)], [set_lr(0.02), run(2, 3)]], errors={1: "unknown_job"})
    p = peer(script)
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with make(p.endpoint, model, optimizer) as cb:
        train(cb, model, optimizer, DigitsBatches(), 3)
        assert cb.lr == 0.02
        train(cb, model, optimizer, DigitsBatches(), 2)
    kinds = [(protocol_kind(r), r["body"].get("step")) for r in script.applied]
    assert kinds == [("hello", 0), ("report", 3), ("hello", 3), ("report", 5)]


def test_internal_error_is_retried_later(peer):
    script = ScriptedTuner([[run(2, 0)], [set_lr(0.03), run(3, 2)]], errors={1: "internal"})
    p = peer(script)
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with make(p.endpoint, model, optimizer, retry_interval=0.05) as cb:
            train(cb, model, optimizer, DigitsBatches(), 2)
            assert cb.lr == 0.1  # the report failed: the LR stays
            import time

            deadline = time.monotonic() + 5
            while cb.lr != 0.03 and time.monotonic() < deadline:
                time.sleep(0.01)
                train(cb, model, optimizer, DigitsBatches(), 1)
            assert cb.lr == 0.03
    assert len([w for w in caught if issubclass(w.category, AutoLRSWarning)]) == 1
    retried = script.reports()
    assert retried[0] == retried[1]  # the same report body, sent again


def test_real_training_on_digits(peer):
    """A small MLP on scikit-learn's digits with a scripted decaying schedule in chunks."""
    def chunk(req):
        start = req["body"]["step"]
        return [run(25, start, lrs=[0.2 * 0.99 ** (start + i) for i in range(25)], eval_every=25)]

    script = ScriptedTuner([chunk] * 8)
    p = peer(script)
    model = make_mlp(batchnorm=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    lrs, losses = [], []
    with make(p.endpoint, model, optimizer, val_fn=lambda: val_loss(model)) as cb:
        train(cb, model, optimizer, DigitsBatches(seed=3), 1000, lrs, losses)
        assert cb.should_stop and cb.global_step == 200
    assert [g[0] for g in lrs] == pytest.approx([0.2 * 0.99 ** i for i in range(200)], rel=1e-12)
    reports = script.reports()
    assert len(reports) == 8 and [len(r["losses"]) for r in reports] == [25] * 8
    assert [x for r in reports for x in r["losses"]] == losses
    evals = [r["evals"][0][1] for r in reports]
    assert evals[-1] < 0.5 * evals[0]  # it learned
    assert sum(reports[-1]["losses"]) < 0.5 * sum(reports[0]["losses"])


def protocol_kind(req):
    return req["type"][: -len("_request")]


def test_plans_are_validated_by_the_shared_vocabulary():
    # Guard for the test scripts themselves: they only send valid plans (except on purpose).
    actions.validate_plan([set_lr(0.1), run(3, 0, lrs=[0.1, 0.2, 0.3])])
