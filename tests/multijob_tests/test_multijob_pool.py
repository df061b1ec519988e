"""Many jobs on one server: a job whose request does not finish does not hold up the others'
replies; one job's requests still run one at a time, in order, with resends answered from the
cache; many concurrent AutoLRS jobs each get their own consistent session."""

from __future__ import annotations

import threading
import time

import pytest
from server_testlib import TIMEOUT_S, ReqClient, admin_token, hello_body, make_config, report_body

from autolrs.server.transport import make_server
from autolrs.testing import SimulatedClient


@pytest.fixture
def pooled_server(tmp_path):
    server = make_server(make_config(tmp_path / "state", workers=2))
    thread = server.serve_in_thread()
    clients: list[ReqClient] = []

    def client(**kw) -> ReqClient:
        c = ReqClient(server.endpoint, **kw)
        clients.append(c)
        return c

    yield server, client
    for c in clients:
        c.close()
    server.stop()
    thread.join(TIMEOUT_S)
    server.close()


def call_in_thread(c: ReqClient, *args, **kw):
    """Start ``c.call`` in a thread; returns (thread, result list)."""
    out: list = []
    t = threading.Thread(target=lambda: out.append(c.call(*args, **kw)), daemon=True)
    t.start()
    return t, out


def test_a_stuck_job_does_not_stall_other_jobs(pooled_server):
    server, client = pooled_server
    a = client(client_id="owner-a")
    assert a.call("hello", hello_body(config={"T_0": 100, "chunk": 10}), job_id="job-a", seq=0)["status"] == "ok"
    # Hold job-a's lock: its next request cannot finish, as if its tuner took forever.
    with server.dispatcher._jobs.hold("job-a"):
        stuck, stuck_reply = call_in_thread(a, "report", report_body(10, 10), job_id="job-a", seq=1)
        time.sleep(0.2)
        assert not stuck_reply  # really stuck
        b = client(timeout=2.0)  # a stalled server would make these time out
        started = time.monotonic()
        assert b.call("ping")["status"] == "ok"
        assert b.call("hello", hello_body(config={"T_0": 100, "chunk": 10}), job_id="job-b", seq=0)["status"] == "ok"
        assert b.call("report", report_body(10, 10), job_id="job-b", seq=1)["status"] == "ok"
        admin = admin_token(server.dispatcher.store.state_dir)
        rows = {r["job_id"]: r for r in b.call("status", credential=admin)["body"]["sessions"]}
        assert rows["job-a"]["step"] == 0 and rows["job-b"]["step"] == 10
        assert time.monotonic() - started < 2.0
    stuck.join(TIMEOUT_S)
    assert stuck_reply[0]["status"] == "ok" and stuck_reply[0]["body"]["plan"][-1]["start_step"] == 10


def test_one_job_runs_one_request_at_a_time_in_order(pooled_server):
    server, client = pooled_server
    first = client(client_id="owner-a")
    assert first.call("hello", hello_body(config={"T_0": 100, "chunk": 10}), job_id="job-a", seq=0)["status"] == "ok"
    resend = client(client_id="owner-a")  # the lazy pirate's fresh socket, same client id
    resend.credentials = first.credentials
    with server.dispatcher._jobs.hold("job-a"):
        t1, r1 = call_in_thread(first, "report", report_body(10, 10), job_id="job-a", seq=1)
        time.sleep(0.1)
        t2, r2 = call_in_thread(resend, "report", report_body(10, 10), job_id="job-a", seq=1)
        time.sleep(0.1)
        assert server.pool.backlog() == 2  # both wait for the job; no worker runs the second
    t1.join(TIMEOUT_S)
    t2.join(TIMEOUT_S)
    assert r1[0] == r2[0] and r1[0]["status"] == "ok"  # the second is the cached reply
    session = server.dispatcher.store.get("job-a")
    assert session.requests == 2 and session.step == 10  # hello + one report, applied once


def test_many_concurrent_autolrs_jobs(pooled_server):
    """Sixteen AutoLRS jobs driven at once through real sockets: each ends where its own
    simulated client says it is, with no reply crossed between jobs."""
    server, client = pooled_server
    config = {"tau": 20, "tau_max": 40, "k": 3, "trial_fraction": 0.25}
    errors: list[BaseException] = []
    steps: dict[str, int] = {}

    def drive(i: int) -> None:
        try:
            c = ReqClient(server.endpoint)
            job = f"auto-{i}"
            sim = SimulatedClient(seed=i)
            reply = c.call("hello", hello_body("autolrs", config, max_steps=400, seed=i), job_id=job, seq=0)
            for seq in range(1, 200):
                assert reply["status"] == "ok" and reply["job_id"] == job, reply
                obs = sim.execute(reply["body"]["plan"])
                if obs is None:
                    break
                body = {"step": obs.step, "steps": obs.steps, "losses": obs.losses,
                        "evals": [list(e) for e in obs.evals]}
                reply = c.call("report", body, job_id=job, seq=seq)
            steps[job] = sim.step
            c.close()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=drive, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[0]
    assert steps == {f"auto-{i}": 400 for i in range(16)}
    rows = client().call("status", credential=admin_token(server.dispatcher.store.state_dir))["body"]["sessions"]
    assert len(rows) == 16 and {r["step"] for r in rows} == {400}
