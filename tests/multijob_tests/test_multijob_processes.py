"""Tuners in tuner processes (server/tuner_host.py): a remote tuner does exactly what the same
tuner does in the server process; a process killed between calls or in the middle of one, or
stuck, is replaced and loses no tuner state; through a real server, a job whose tuner process
is SIGKILLed mid-request gets ``internal`` for that request and then goes on exactly as an
undisturbed job with the same seed."""

from __future__ import annotations

import gc
import os
import signal
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest
from server_testlib import ReqClient, admin_token, hello_body

from autolrs.errors import ConfigError
from autolrs.server.tuner_host import ProcessTuners, TunerProcessDied, build_tuner
from autolrs.server.tuner_worker import RemoteTraceback
from autolrs.testing import SimulatedClient
from autolrs.tuners import UnknownTunerError
from autolrs.wire import messages

sys.path.insert(0, str(Path(__file__).parent.parent))
from shared_testlib import MidRequestKill, tuner_processes, wait_for_tuner_processes  # noqa: E402

JOB = {"tau": 20, "tau_max": 40, "k": 3, "trial_fraction": 0.25, "initial_lr": 0.1, "max_steps": 400}


@pytest.fixture
def host():
    made: list[ProcessTuners] = []

    def make(processes=1, **kw) -> ProcessTuners:
        h = ProcessTuners(processes, **kw)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def in_flight(slot, job) -> None:
    """Wait until ``slot`` shows a call of ``job`` in flight."""
    deadline = time.monotonic() + 60
    while slot.describe()["busy"] != job:
        assert time.monotonic() < deadline, "the call never reached the process"
        time.sleep(0.01)


def gone(pid: int) -> None:
    """Wait until process ``pid`` has exited with all its threads (its pipes closed): a
    zombie left alone, or reaped. Its main thread turns zombie before the other threads (the
    BLAS pool) have closed the process's files."""
    deadline = time.monotonic() + 60
    proc = Path(f"/proc/{pid}")
    while True:
        try:
            if "\nState:\tZ" in (proc / "status").read_text() and len(os.listdir(proc / "task")) <= 1:
                return
        except OSError:  # reaped
            return
        assert time.monotonic() < deadline, f"process {pid} did not exit"
        time.sleep(0.01)


def test_a_remote_tuner_does_exactly_what_the_tuner_does_in_process(host):
    """Before its process is ready the tuner runs in the server; at its first call after that
    it moves there with its state; plans and states match an in-process tuner at every report."""
    h = host(2)
    remote = build_tuner("autolrs", JOB, 3)
    tuner = h.make("autolrs", JOB, 3, job="job-a")
    assert tuner.local is not None  # not started: built here
    sim, ref_sim = SimulatedClient(seed=3), SimulatedClient(seed=3)
    reports = 0
    while True:
        plan, ref_plan = tuner.ask(), remote.ask()
        assert plan == ref_plan
        obs, ref_obs = sim.execute(plan), ref_sim.execute(ref_plan)
        if obs is None:
            break
        tuner.tell(obs)
        remote.tell(ref_obs)
        assert tuner.state_dict() == remote.state_dict() and tuner.summary() == remote.summary()
        reports += 1
        if reports == 5:
            assert h.wait_ready(120)
        if reports == 6:
            assert tuner.local is None and tuner.incarnation == 1  # it moved to its process
            assert h.slot_of("job-a").describe()["tuners"] == 1
    assert reports > 20 and sim.step == 400


def test_reads_are_fresh_copies_and_notices_come_along(host):
    h = host()
    assert h.wait_ready(120)
    tuner = h.make("cosine", {"T_0": 100, "initial_lr": 0.1}, 0, job="job-a")
    assert tuner.local is None and tuner.notices == build_tuner("cosine", {"T_0": 100, "initial_lr": 0.1}, 0).notices
    plan = tuner.ask()
    plan.append({"op": "junk"})
    plan[0]["lr"] = -1
    assert tuner.ask() == build_tuner("cosine", {"T_0": 100, "initial_lr": 0.1}, 0).ask()


def test_errors_come_back_with_their_type_and_the_processs_traceback(host):
    h = host()
    assert h.wait_ready(120)
    with pytest.raises(ConfigError, match="unknown option"):
        h.make("cosine", {"T_0": 100, "initial_lr": 0.1, "nonsense": 1}, 0, job="job-a")
    with pytest.raises(UnknownTunerError, match="unknown tuner 'nope'"):
        h.make("nope", {}, 0, job="job-a")
    tuner = h.make("cosine", {"T_0": 100, "initial_lr": 0.1}, 0, job="job-a")
    with pytest.raises(Exception) as here:
        build_tuner("cosine", {"T_0": 100, "initial_lr": 0.1}, 0).tell(object())
    with pytest.raises(type(here.value)) as caught:  # what the in-process tuner raises
        tuner.tell(object())
    assert str(caught.value) == str(here.value)
    assert isinstance(caught.value.__cause__, RemoteTraceback) and "in the tuner process" in str(caught.value.__cause__)
    assert tuner.ask()[-1]["op"] == "run"  # the process lives on


def test_a_process_killed_between_calls_is_replaced_with_every_tuner_intact(host):
    h = host()
    assert h.wait_ready(120)
    tuners = {j: h.make("autolrs", JOB, i, job=j) for i, j in enumerate(("job-a", "job-b"))}
    refs = {j: build_tuner("autolrs", JOB, i) for i, j in enumerate(("job-a", "job-b"))}
    sims = {j: SimulatedClient(seed=i) for i, j in enumerate(tuners)}
    for _ in range(3):
        for j in tuners:
            obs = sims[j].execute(refs[j].ask())
            tuners[j].tell(obs)
            refs[j].tell(obs)
    slot = h.slots[0]
    pid = slot.describe()["pid"]
    os.kill(pid, signal.SIGKILL)
    gone(pid)
    for j in tuners:  # both tuners are rebuilt in the new process from their last state
        obs = sims[j].execute(refs[j].ask())
        tuners[j].tell(obs)
        refs[j].tell(obs)
        assert tuners[j].state_dict() == refs[j].state_dict() and tuners[j].ask() == refs[j].ask()
    row = slot.describe()
    assert row["pid"] != pid and row["restarts"] == 1 and row["ready"] and row["tuners"] == 2


def test_a_process_killed_mid_call_fails_that_call_and_keeps_the_state_before_it(host):
    h = host()
    assert h.wait_ready(120)
    tuner, ref = h.make("autolrs", JOB, 0, job="job-a"), build_tuner("autolrs", JOB, 0)
    sim = SimulatedClient(seed=0)
    obs = sim.execute(ref.ask())
    tuner.tell(obs)
    ref.tell(obs)
    obs = sim.execute(ref.ask())
    slot = h.slots[0]
    pid = slot.describe()["pid"]
    os.kill(pid, signal.SIGSTOP)  # cannot answer: the call is in flight when the process dies
    outcome: list = []

    def call() -> None:
        try:
            tuner.tell(obs)
            outcome.append("answered")
        except TunerProcessDied as exc:
            outcome.append(exc)

    t = threading.Thread(target=call)
    t.start()
    in_flight(slot, "job-a")
    os.kill(pid, signal.SIGKILL)
    t.join(60)
    assert isinstance(outcome[0], TunerProcessDied) and "job 'job-a'" in str(outcome[0])
    assert tuner.state_dict() == ref.state_dict()  # as before the call: nothing applied
    tuner.tell(obs)  # sent again: a new process takes it
    ref.tell(obs)
    assert tuner.state_dict() == ref.state_dict() and slot.describe()["restarts"] == 1


def test_a_stuck_call_is_killed_after_tuner_timeout(host):
    h = host(timeout_s=0.5)
    assert h.wait_ready(120)
    tuner = h.make("cosine", {"T_0": 100, "initial_lr": 0.1, "chunk": 10}, 0, job="job-a")
    ref = build_tuner("cosine", {"T_0": 100, "initial_lr": 0.1, "chunk": 10}, 0)
    sim = SimulatedClient()
    obs = sim.execute(ref.ask())
    pid = h.slots[0].describe()["pid"]
    os.kill(pid, signal.SIGSTOP)  # as a tuner that never returns
    with pytest.raises(TunerProcessDied, match="tuner_timeout_s"):
        tuner.tell(obs)
    gone(pid)  # killed
    tuner.tell(obs)
    ref.tell(obs)
    assert tuner.state_dict() == ref.state_dict() and h.slots[0].describe()["restarts"] == 1


def test_remote_tuners_carry_the_divergence_guard_as_in_process_ones(host):
    """make_tuner wraps tuners in the guard in the tuner process too (unless ``guard: false``)."""
    h = host()
    assert h.wait_ready(120)
    for config, guarded in (({"T_0": 100, "initial_lr": 0.1}, True),
                            ({"T_0": 100, "initial_lr": 0.1, "guard": False}, False)):
        tuner, ref = h.make("cosine", config, 0, job="job-a"), build_tuner("cosine", config, 0)
        assert tuner.local is None  # built in the process
        sim = SimulatedClient()
        for _ in range(3):
            obs = sim.execute(ref.ask())
            tuner.tell(obs)
            ref.tell(obs)
        summary, state = tuner.summary(), tuner.state_dict()
        assert ("guard" in summary, "guard" in state) == (guarded, guarded)
        assert summary == ref.summary() and state == ref.state_dict() and tuner.ask() == ref.ask()


def test_a_quick_start_starts_each_tuner_process_at_its_first_job(live_server, tmp_path):
    """``--background-tuner-import`` (the embedded server's start): no tuner process before a
    job needs one; a job's tuner runs in the server until its process is up, then moves there."""
    server = live_server(tmp_path / "state", "--processes", "2", "--background-tuner-import")
    assert [(r["pid"], r["ready"]) for r in tuner_processes(server.endpoint)] == [(None, False), (None, False)]
    job = "job-a"
    index = zlib.crc32(job.encode()) % 2
    client = ReqClient(server.endpoint, timeout=120)
    try:
        reply = client.call("hello", hello_body("cosine", {"T_0": 100}), job_id=job, seq=0)
        assert reply["status"] == "ok", reply
        deadline = time.monotonic() + 120
        while not tuner_processes(server.endpoint)[index]["ready"]:
            assert time.monotonic() < deadline, tuner_processes(server.endpoint)
            time.sleep(0.1)
        sim = SimulatedClient()
        reply = client.call("report", report(sim.execute(reply["body"]["plan"])), job_id=job, seq=1)
        assert reply["status"] == "ok", reply
    finally:
        client.close()
    rows = tuner_processes(server.endpoint)
    assert rows[index]["tuners"] == 1  # the job's tuner moved to its process
    assert rows[1 - index]["pid"] is None  # no job of its own: never started


def test_tuners_of_sessions_gone_are_dropped_from_their_process(host):
    h = host()
    assert h.wait_ready(120)
    tuners = [h.make("cosine", {"T_0": 100, "initial_lr": 0.1}, i, job=f"job-{i}") for i in range(3)]
    assert h.slots[0].describe()["tuners"] == 3
    del tuners[1:]
    gc.collect()
    tuners[0].tell(SimulatedClient().execute(tuners[0].ask()))  # the drops travel with the next call
    assert h.slots[0].describe()["tuners"] == 1


def report(obs) -> dict:
    return messages.Report(obs).to_body()


def drive(client: ReqClient, job: str, *, kill_at: int | None = None, endpoint: str | None = None):
    """Run a simulated AutoLRS job to its end; returns (plans, errors). At report ``kill_at``
    the job's tuner process is SIGKILLed while the report is in flight; the report is then sent
    again (as a client does after ``internal``)."""
    sim = SimulatedClient(seed=5)
    reply = client.call("hello", hello_body("autolrs", {k: v for k, v in JOB.items() if k not in ("initial_lr", "max_steps")},
                                            max_steps=400, seed=5), job_id=job, seq=0)
    assert reply["status"] == "ok", reply
    plans, errors, seq = [reply["body"]["plan"]], [], 1
    while True:
        obs = sim.execute(plans[-1])
        if obs is None:
            return plans, errors
        if len(plans) == kill_at:
            kill = MidRequestKill(endpoint, job).arm()
            reply = client.call("report", report(obs), job_id=job, seq=seq)
            errors.append((kill.join(), reply))
            seq += 1
        reply = client.call("report", report(obs), job_id=job, seq=seq)
        assert reply["status"] == "ok", reply
        plans.append(reply["body"]["plan"])
        seq += 1


def test_a_job_goes_on_exactly_on_plan_after_its_tuner_process_is_killed_mid_request(live_server, tmp_path):
    server = live_server(tmp_path / "state", "--processes", "2")
    wait_for_tuner_processes(server.endpoint)
    client = ReqClient(server.endpoint, timeout=120)
    try:
        expected, _ = drive(client, "undisturbed")
        plans, errors = drive(client, "killed", kill_at=8, endpoint=server.endpoint)
        status = client.call("status", credential=admin_token(tmp_path / "state"))["body"]
    finally:
        client.close()
    [(killed, failed)] = errors
    assert failed["status"] == "error" and failed["error"]["code"] == "internal", failed
    assert "tuner process" in server.log() and str(killed["pid"]) in server.log()
    assert plans == expected and len(plans) > 20  # the same decisions, report after report
    rows = {r["job_id"]: r for r in status["sessions"]}
    assert rows["killed"]["step"] == rows["undisturbed"]["step"] == 400
    assert rows["killed"]["requests"] == rows["undisturbed"]["requests"]  # the failed report was not applied
    restarted = status["server"]["tuner_processes"][killed["index"]]
    assert restarted["restarts"] == 1 and restarted["pid"] != killed["pid"] and restarted["ready"]
