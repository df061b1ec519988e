"""Fail open: without a server, or when it stops answering, training goes on with one warning,
no call blocks longer than the timeout, and the callback resumes when the server answers again."""

from __future__ import annotations

import os
import time
import warnings

import pytest
import torch

from autolrs.actions import run, set_lr
from autolrs.callbacks import AutoLRS, ServerUnavailableWarning
from autolrs.testing.peer import ScriptedPeer, ScriptedTuner, free_port
from autolrs.testing.training import DigitsBatches, make_mlp, train_step
from callbacks_testlib import peer  # noqa: F401  (fixture)

TIMEOUT = 0.3
RETRY = 0.05


def unavailable(caught):
    return [w for w in caught if issubclass(w.category, ServerUnavailableWarning)]


def timed_steps(cb, model, optimizer, batches, n, pause=0.0):
    """n training steps; returns the longest cb.step() call in seconds."""
    longest = 0.0
    for _ in range(n):
        loss = train_step(model, optimizer, batches)
        t0 = time.monotonic()
        cb.step(loss)
        longest = max(longest, time.monotonic() - t0)
        if pause:
            time.sleep(pause)
    return longest


def test_no_server_at_all(tmp_path):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    batches = DigitsBatches()
    t0 = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with AutoLRS(model, optimizer, server=endpoint, timeout=TIMEOUT, retry_interval=RETRY,
                     checkpoint="disk", checkpoint_dir=tmp_path) as cb:
            built = time.monotonic() - t0
            longest = timed_steps(cb, model, optimizer, batches, 100, pause=0.001)
            assert cb.lr == 0.1 and optimizer.param_groups[0]["lr"] == 0.1
            assert cb.global_step == 100 and not cb.should_stop and not cb.online
        t_close = time.monotonic()
    closing = time.monotonic() - t_close
    assert len(unavailable(caught)) == 1
    assert unavailable(caught)[0].filename == __file__
    assert TIMEOUT * 0.8 < built < TIMEOUT + 0.5
    assert longest < 0.05  # background retries never block
    assert closing < 0.2  # no goodbye: the server never knew this job
    assert os.listdir(tmp_path) == []


def test_server_stops_answering_mid_run_and_comes_back(peer):
    script = ScriptedTuner([
        [run(5, 0)],
        # Answered late: the client will have trained on past step 5 and skips those steps.
        lambda req: [set_lr(0.5), run(50, req["body"]["step"], lrs=[0.01 * (i + 1) for i in range(50)])],
        [set_lr(0.2), run(5, 55)],
        [run(1, 60)],
    ])
    p = peer(script)
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = DigitsBatches()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with AutoLRS(model, optimizer, server=p.endpoint, job="flaky", timeout=TIMEOUT, retry_interval=RETRY) as cb:
            timed_steps(cb, model, optimizer, batches, 4)
            p.silent = True
            t0 = time.monotonic()
            timed_steps(cb, model, optimizer, batches, 1)  # step 5 reports: no answer
            blocked = time.monotonic() - t0
            assert TIMEOUT * 0.8 < blocked < TIMEOUT + 0.3
            assert len(unavailable(caught)) == 1 and not cb.online
            longest = timed_steps(cb, model, optimizer, batches, 10, pause=0.01)
            assert longest < 0.05 and cb.lr == 0.1
            p.silent = False
            deadline = time.monotonic() + 5.0
            while cb.lr == 0.1 and time.monotonic() < deadline:
                timed_steps(cb, model, optimizer, batches, 1, pause=0.01)
            assert cb.online
            late = cb.global_step - 5  # steps trained while the server was silent
            assert late >= 10
            # The plan's lrs continue where the client is, not where the server thought it was.
            assert cb.lr == pytest.approx(0.01 * (late + 1))
            timed_steps(cb, model, optimizer, batches, 55 - cb.global_step)
            assert cb.global_step == 55 and cb.lr == 0.2
            report = script.reports()[1]
            assert report["step"] == 55 and report["steps"] == 50 - late and len(report["losses"]) == 50 - late

            # A second outage: still exactly one warning per callback.
            p.silent = True
            timed_steps(cb, model, optimizer, batches, 8)  # reports at 60, unanswered
            assert not cb.online and cb.lr == 0.2 and cb.global_step == 63
    assert len(unavailable(caught)) == 1
    # The first report was resent (same seq) while the server was silent.
    first_report_seqs = {r["seq"] for r in p.requests("report") if r["body"]["step"] == 5}
    assert len(first_report_seqs) == 1 and len([r for r in p.requests("report") if r["body"]["step"] == 5]) > 1


def test_server_down_at_start_then_up_skips_ahead():
    port = free_port()
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = DigitsBatches()
    script = ScriptedTuner([[run(30, 0, lrs=[0.001 * (i + 1) for i in range(30)])], [set_lr(0.05), run(10, 30)]])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with AutoLRS(model, optimizer, server=f"tcp://127.0.0.1:{port}", job="late-start", timeout=TIMEOUT,
                     retry_interval=RETRY) as cb:
            timed_steps(cb, model, optimizer, batches, 5)
            assert cb.lr == 0.1
            p = ScriptedPeer(script, port=port)
            try:
                deadline = time.monotonic() + 5.0
                while not cb.online and time.monotonic() < deadline:
                    timed_steps(cb, model, optimizer, batches, 1, pause=0.01)
                g = cb.global_step
                assert cb.online and g < 30
                assert cb.lr == pytest.approx(0.001 * (g + 1))  # lrs[g]: the g steps already done are skipped
                timed_steps(cb, model, optimizer, batches, 30 - g)
                assert cb.lr == 0.05
                report = script.reports()[0]
                assert report["step"] == 30 and report["steps"] == 30 - g
            finally:
                cb.close()
                p.close()
    assert len(unavailable(caught)) == 1
    assert script.goodbyes and script.goodbyes[0]["body"]["reason"] == "done"


def test_late_reply_past_the_whole_segment_reports_at_the_next_step(peer):
    script = ScriptedTuner([[run(2, 0)], [run(3, 2, lrs=[0.2, 0.3, 0.4])], [set_lr(0.05), run(5, 0)]])
    p = peer(script)
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = DigitsBatches()
    with AutoLRS(model, optimizer, server=p.endpoint, job="very-late", timeout=TIMEOUT, retry_interval=RETRY) as cb:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ServerUnavailableWarning)
            timed_steps(cb, model, optimizer, batches, 1)
            p.silent = True
            timed_steps(cb, model, optimizer, batches, 1)  # the report of step 2 goes unanswered
            timed_steps(cb, model, optimizer, batches, 6, pause=0.01)  # past the segment the reply will give
            p.silent = False
            deadline = time.monotonic() + 5.0
            while not cb.online and time.monotonic() < deadline:
                timed_steps(cb, model, optimizer, batches, 1, pause=0.01)
        assert cb.lr == 0.4  # the schedule's last LR
        g = cb.global_step
        timed_steps(cb, model, optimizer, batches, 1)
        report = script.reports()[1]
        assert report["step"] == g + 1 and report["steps"] == 1 and len(report["losses"]) == 1
        assert cb.lr == 0.05


def test_exception_inside_with_says_goodbye_with_error_and_removes_files(peer, tmp_path):
    script = ScriptedTuner([[run(10, 0)]])
    p = peer(script)
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ZeroDivisionError):
        with AutoLRS(model, optimizer, server=p.endpoint, checkpoint="disk", checkpoint_dir=tmp_path) as cb:
            cb._checkpoints.save("x")
            assert os.listdir(tmp_path)
            cb.step(1.0)
            1 / 0
    assert os.listdir(tmp_path) == []
    assert script.goodbyes[0]["body"] == {"step": 1, "reason": "error", "lr": 0.1}


def test_goodbye_to_a_dead_server_is_short(peer):
    p = peer(ScriptedTuner([[run(100, 0)]]))
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    cb = AutoLRS(model, optimizer, server=p.endpoint, timeout=5.0)
    p.silent = True
    t0 = time.monotonic()
    cb.close()
    assert time.monotonic() - t0 < AutoLRS.GOODBYE_TIMEOUT + 0.3


def test_step_fast_path_overhead():
    """The per-step cost inside a long segment is tiny (a lenient bound; the report gives numbers)."""
    peer_script = ScriptedTuner([[run(10**6, 0)]])
    p = ScriptedPeer(peer_script)
    try:
        model = make_mlp()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        loss = torch.tensor(1.0, requires_grad=True) * 2
        with AutoLRS(model, optimizer, server=p.endpoint, timeout=2.0) as cb:
            n = 10_000
            t0 = time.perf_counter()
            for _ in range(n):
                cb.step(loss)
            per_step = (time.perf_counter() - t0) / n
        assert per_step < 40e-6, f"{per_step * 1e6:.1f} us per step"
    finally:
        p.close()
