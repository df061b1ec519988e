"""The per-job history the dashboard draws: its downsampling rule, its bounds on disk, replay
after a restart, and what the dispatcher records for real tuners (no sockets here)."""

from __future__ import annotations

import math

import pytest

from autolrs.server.sessions import Session
from autolrs.wire import protocol
from autolrs.server import history
from autolrs.server.dashboard.follow import Follower
from autolrs.server.history import HistoryRecorder, JobHistory, bucket_width, make_entry, replay
from autolrs.testing import SimulatedClient

from server_testlib import hello_body


def segment(end: int, steps: int, lr: float, loss=lambda t: 1.0 / t, before=None, after=None, lrs=None):
    """The entry of a report of ``steps`` steps ending at ``end``, trained at ``lr`` (or ``lrs``)."""
    losses = [loss(t) for t in range(end - steps + 1, end + 1)]
    plan = [{"op": "set_lr", "lr": lr}, {"op": "run", "steps": steps, "start_step": end - steps,
                                         **({"lrs": lrs} if lrs else {})}]
    return make_entry(plan, end, steps, losses, [], None, None, before, after), losses


def test_bucket_width_is_the_smallest_power_of_two_that_fits():
    assert bucket_width(1, 1024) == 1
    assert bucket_width(1024, 1024) == 1
    assert bucket_width(1025, 1024) == 2
    assert bucket_width(2048, 1024) == 2
    assert bucket_width(2049, 1024) == 4
    assert bucket_width(1_000_000, 1024) == 1024  # 1e6 / 1024 = 977 buckets


def test_every_step_is_kept_while_the_job_is_short():
    h = JobHistory()
    entry, losses = segment(500, 500, 0.1)
    h.apply(entry)
    view = h.view()
    assert view["width"] == 1
    assert view["series"]["step"] == list(range(1, 501))
    assert view["series"]["loss"] == pytest.approx(losses)
    assert set(view["series"]["lr"]) == {0.1}


def test_a_long_job_stays_bounded_and_its_means_stay_exact():
    """100,000 steps in 500-step reports: at most 1,024 points, each the exact mean of its bucket."""
    h = JobHistory()
    total = 0.0
    for end in range(500, 100_001, 500):
        entry, losses = segment(end, 500, 0.1 if end <= 50_000 else 0.01, loss=lambda t: math.sin(t) + 2)
        total += sum(losses)
        h.apply(entry)
    view = h.view()
    width = bucket_width(100_000, history.SERIES_POINTS)
    assert view["width"] == width == 128
    assert len(view["series"]["step"]) <= history.SERIES_POINTS
    # Each point: its bucket's last step and that step's LR; the means add back up to the total.
    assert all(s % width == 0 or s == 100_000 for s in view["series"]["step"])
    counts = [p[3] for p in h.series.values()]
    assert sum(counts) == 100_000
    assert sum(m * n for m, n in zip(view["series"]["loss"], counts)) == pytest.approx(total, rel=1e-7)
    lrs = dict(zip(view["series"]["step"], view["series"]["lr"]))
    assert lrs[50_048] == 0.01 and lrs[49_920] == 0.1  # bucket (49,920, 50,048] ends at LR 0.01


def test_per_step_lrs_nonfinite_losses_and_a_late_segment():
    lrs = [0.1 * 0.9 ** i for i in range(10)]
    losses = [1.0, float("nan"), 2.0, float("inf")] + [1.0] * 6
    entry = make_entry([{"op": "run", "steps": 10, "start_step": 0, "lrs": lrs}], 10, 10, losses, [[5, 0.7]],
                       None, None, None, None)
    h = JobHistory()
    h.apply(entry)
    view = h.view()
    assert view["series"]["lr"] == pytest.approx(lrs, rel=1e-6)  # kept to 7 significant digits
    assert view["series"]["loss"][1] is None and view["series"]["nonfinite"][1] == 1
    assert view["series"]["nonfinite"][3] == 1 and sum(view["series"]["nonfinite"]) == 2
    assert view["evals"] == {"step": [5], "value": [0.7]}
    assert view["last_loss"] == [10, 1.0]


@pytest.mark.parametrize("background", [False, True])
def test_the_journal_is_compacted_and_replays_to_the_same_history(tmp_path, background):
    recorder = HistoryRecorder(tmp_path, journal_bytes=20_000, background=background)
    reference = JobHistory()
    for end in range(100, 20_001, 100):
        entry, _ = segment(end, 100, 0.05, loss=lambda t: 1 + 1 / t)
        recorder.append("job", entry)
        reference.apply(entry)
        if not background:  # compacted at once: the snapshot plus one line at most
            assert recorder.path("job").stat().st_size < 20_000 + 30_000
    assert recorder.drain()
    assert recorder.path("job").stat().st_size < 20_000 + 30_000
    lines = recorder.path("job").read_bytes().splitlines()
    assert b"snapshot" in lines[0]
    # The same history as applying every entry, up to the 7 digits the snapshot keeps.
    replayed, expected = replay(lines).view(), reference.view()
    assert replayed["series"]["step"] == expected["series"]["step"]
    assert replayed["series"]["loss"] == pytest.approx(expected["series"]["loss"], rel=1e-6)
    assert replayed["reports"] == expected["reports"] == 200
    assert not list(tmp_path.glob("job/*.tmp-*"))


def test_a_follower_reads_appended_lines_once_complete_and_rereads_a_compacted_file(tmp_path):
    recorder = HistoryRecorder(tmp_path, background=False)
    follower = Follower(JobHistory, history.apply_record)
    path = recorder.path("job")
    first, _ = segment(100, 100, 0.1)
    recorder.append("job", first)
    assert follower.get(path).reports == 1
    second, _ = segment(200, 100, 0.2)
    line = protocol.dumps({"r": second}) + b"\n"
    with open(path, "ab") as f:
        f.write(line[:40])  # a writer caught mid-line
    assert follower.get(path).reports == 1
    with open(path, "ab") as f:
        f.write(line[40:])
    view = follower.get(path).view()
    assert view["reports"] == 2 and view["series"]["lr"][-1] == 0.2
    assert view == history.load(path).view()  # incremental read == full replay
    recorder.compact("job")  # replaced by a snapshot line: read again from the start
    third, _ = segment(300, 100, 0.3)
    recorder.append("job", third)
    assert follower.get(path).view()["reports"] == 3 == history.load(path).reports


def test_trial_windows_are_reduced_and_kept_for_the_last_stages():
    h = JobHistory()
    end = 0
    for stage in range(1, 21):
        for trial in range(3):
            end += 100
            before = {"phase": "trial", "stage": stage, "trial": trial, "mode": "train"}
            entry, _ = segment(end, 100, 0.01 * (trial + 1), before=before)
            assert len(entry["win"]["points"]) == history.WINDOW_POINTS
            h.apply(entry)
        record = {"stage": stage, "trials": [{"lr": 0.01, "forecast": 1.0, "status": "ok"}], "winner": 0.01}
        h.apply(make_entry(None, end, 0, [], [], None, None, {"last_stage": {"stage": stage - 1}},
                           {"last_stage": record}))
    view = h.view()
    assert [s["stage"] for s in view["stages"]] == list(range(1, 21))
    kept = sorted({w["stage"] for w in view["windows"]})
    assert kept == list(range(21 - history.WINDOW_STAGES, 21))
    first = view["windows"][0]
    assert first["trial"] == 0 and first["lr"] == 0.01 and first["kind"] == "train"
    # Positions are steps since the trial started: 100 steps in 32 slices.
    assert first["points"][0][0] == pytest.approx(1.0) and first["points"][-1][0] == pytest.approx(97.5)


def run_job(harness, job, tuner, config, max_steps, seq=0, client=None):
    client = client or SimulatedClient(seed=0)
    reply = harness.call("hello", hello_body(tuner, config, max_steps=max_steps), job_id=job, seq=seq)
    while reply["status"] == "ok":
        obs = client.execute(reply["body"]["plan"])
        if obs is None:
            break
        seq += 1
        reply = harness.call("report", obs.to_body(), job_id=job, seq=seq)
    assert reply["status"] == "ok", reply
    return seq


def test_the_dispatcher_records_autolrs_stages_windows_and_the_bounds_sweep(harness):
    config = {"tau": 100, "k": 4, "tau_max": 200, "lr_min": "auto", "lr_max": "auto", "auto_num_iter": 50}
    run_job(harness, "auto", "autolrs", config, max_steps=1500)
    state = protocol.loads((harness.state_dir / "jobs" / "auto" / "state.json").read_bytes())
    stages = Session.from_state(state).tuner.stages  # the tuner as the server would resume it
    view = history.load(harness.state_dir / "jobs" / "auto" / history.FILENAME).view()
    assert view["stages"] == stages  # every stage's record, as the tuner keeps it
    for record in stages:  # each trial's window, with the LR the trial ran at
        for i, trial in enumerate(record["trials"]):
            win = next(w for w in view["windows"] if (w["stage"], w["trial"]) == (record["stage"], i))
            assert win["lr"] == trial["lr"] and len(win["points"]) == record["trial_steps"]
    assert len(view["sweep"]["lr"]) == 50  # the range test behind the bounds, gone from the tuner's state
    assert view["sweep"]["lr"] == sorted(view["sweep"]["lr"])
    assert view["last_step"] == 1500 and view["series"]["step"][-1] == 1500


def test_the_auto_tuner_s_sweep_and_trial_windows_are_recorded(harness):
    run_job(harness, "auto-job", "auto", {}, max_steps=1000)
    summary = harness.call("status")["body"]["sessions"][0]["summary"]
    view = history.load(harness.state_dir / "jobs" / "auto-job" / history.FILENAME).view()
    # Every step the sweep ran: the tuner's curve, plus the steps of its last chunk past a divergence.
    assert summary["sweep"]["points"] <= len(view["sweep"]["lr"]) < summary["sweep"]["points"] + 10
    windows = [w for w in view["windows"] if w["stage"] == 0]
    assert [w["lr"] for w in windows] == pytest.approx([t[0] for t in summary["trials"]], rel=1e-6)
    assert all(len(w["points"]) > 0 for w in windows)


def test_history_survives_a_restart_and_a_new_session_starts_a_new_one(harness):
    client = SimulatedClient(seed=1)
    reply = harness.call("hello", hello_body("cosine", {"T_0": 300, "chunk": 100}), job_id="cos", seq=0)
    for seq in range(1, 4):
        reply = harness.call("report", client.execute(reply["body"]["plan"]).to_body(), job_id="cos", seq=seq)
    before = history.load(harness.state_dir / "jobs" / "cos" / history.FILENAME).view()
    assert before["reports"] == 3 and before["last_step"] == 300
    restarted = harness.restart()
    try:
        reply = restarted.call("hello", hello_body("cosine", {"T_0": 300, "chunk": 100}, step=300),
                               job_id="cos", seq=4)
        assert reply["body"]["resumed"] is True
        restarted.call("report", client.execute(reply["body"]["plan"]).to_body(), job_id="cos", seq=5)
        after = history.load(restarted.state_dir / "jobs" / "cos" / history.FILENAME).view()
        assert after["reports"] == 4 and after["series"]["step"][:300] == before["series"]["step"]
        restarted.call("goodbye", {"step": 400}, job_id="cos", seq=6)
        # A hello after the job finished starts a new session: the old history goes with the old state.
        restarted.call("hello", hello_body("cosine", {"T_0": 300, "chunk": 100}), job_id="cos",
                       client_id="client-b", seq=0)
        assert history.load(restarted.state_dir / "jobs" / "cos" / history.FILENAME).view()["reports"] == 0
    finally:
        restarted.store.close()
