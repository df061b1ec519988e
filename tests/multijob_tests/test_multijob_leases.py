"""Leases and limits: a job not heard from for lease_s is listed as expired, unloaded from memory
and no longer counted against max_sessions; its client can still come back and carry on."""

from __future__ import annotations

import time

from server_testlib import DispatcherHarness, ReqClient, hello_body, make_config, report_body, run_cli

from autolrs.wire.protocol import ErrorCode
from autolrs.server.dispatcher import Dispatcher
from autolrs.server.sessions import SessionStore


class Server(DispatcherHarness):
    """A dispatcher (no sockets) with a lease and a session limit; job requests carry their
    job's credential, status is the admin's."""

    def __init__(self, state_dir, **server):
        super().__init__(state_dir)
        self.store.close()
        self.store = SessionStore(state_dir)
        self.dispatcher = Dispatcher(make_config(state_dir, **server), self.store)

    def listed(self) -> dict:
        return {r["job_id"]: r["status"] for r in self.call("status")["body"]["sessions"]}


def test_expired_job_is_listed_unloaded_and_resumes(tmp_path):
    s = Server(tmp_path / "state", lease_s=0.3)
    cosine = hello_body(config={"T_0": 100, "chunk": 10})
    for job in ("job-a", "job-b"):
        assert s.call("hello", cosine, job_id=job)["status"] == "ok"
    assert s.call("report", report_body(10, 10), job_id="job-a", seq=1)["status"] == "ok"
    time.sleep(0.2)
    assert s.call("report", report_body(10, 10), job_id="job-b", seq=1)["status"] == "ok"  # renews b's lease
    time.sleep(0.15)
    assert s.listed() == {"job-a": "expired", "job-b": "active"}
    assert s.dispatcher.reap() == ["job-a"]
    assert set(s.store.sessions) == {"job-b"}  # a is unloaded, still listed
    assert s.listed() == {"job-a": "expired", "job-b": "active"}
    assert (tmp_path / "state" / "jobs" / "job-a" / "state.json").exists()

    # the late client carries on where it stopped: its session comes back from disk
    reply = s.call("report", report_body(20, 10), job_id="job-a", seq=2)
    assert reply["status"] == "ok" and reply["body"]["plan"][-1]["start_step"] == 20
    # and its last reply is still recognised when resent
    assert s.call("report", report_body(20, 10), job_id="job-a", seq=2) == reply
    assert s.store.get("job-a").requests == 3
    assert s.listed()["job-a"] == "active"
    s.store.close()


def test_session_limit_counts_live_jobs_only(tmp_path):
    state = tmp_path / "state"
    s = Server(state, lease_s=0.3, max_sessions=2)
    body = hello_body(config={"T_0": 100, "chunk": 10})
    assert s.call("hello", body, job_id="job-a")["status"] == "ok"
    assert s.call("hello", body, job_id="job-b")["status"] == "ok"
    refused = s.call("hello", body, job_id="job-c")
    assert refused["status"] == "error" and refused["error"]["code"] == ErrorCode.TOO_MANY_SESSIONS
    assert "max_sessions 2" in refused["error"]["message"]
    assert not (state / "jobs" / "job-c").exists()
    # a live job may still resume (it holds a slot already)
    assert s.call("hello", body, job_id="job-a", seq=1)["body"]["resumed"] is True
    assert s.call("goodbye", {"step": 0}, job_id="job-b", seq=1)["status"] == "ok"  # finished: frees a slot
    assert s.call("hello", body, job_id="job-c")["status"] == "ok"
    time.sleep(0.35)  # a and c expire: slots free even before the reaper runs
    assert s.call("hello", body, job_id="job-d")["status"] == "ok"
    assert s.call("hello", body, job_id="job-e")["status"] == "ok"
    assert s.listed() == {"job-a": "expired", "job-b": "finished", "job-c": "expired",
                          "job-d": "active", "job-e": "active"}
    s.store.close()


def test_lease_and_limits_on_a_real_server(live_server, tmp_path):
    config = tmp_path / "server.yaml"
    config.write_text("server: {lease_s: 0.5, max_sessions: 1, max_message_bytes: 2048}\n")
    server = live_server(tmp_path / "state", "--config", str(config))

    c = ReqClient(server.endpoint)
    try:
        assert c.call("hello", hello_body(config={"T_0": 100, "chunk": 10}), job_id="job-a", seq=0)["status"] == "ok"
        big = c.call("report", report_body(10, 10, losses=[1.0] * 500), job_id="job-a", seq=1)
        assert big["error"]["code"] == ErrorCode.TOO_LARGE
        assert c.call("hello", hello_body(), job_id="job-b", seq=0)["error"]["code"] == ErrorCode.TOO_MANY_SESSIONS
        time.sleep(0.8)  # past the lease; the reaper runs every lease/4
        status = run_cli("status", "--server", server.endpoint)
        assert status.returncode == 0 and "expired" in status.stdout, status.stdout
        assert c.call("hello", hello_body(), job_id="job-b", seq=0)["status"] == "ok"
        # a returning client is never refused for capacity: it was admitted before
        assert c.call("report", report_body(10, 10), job_id="job-a", seq=2)["status"] == "ok"
    finally:
        c.close()
    assert "lease of 1 job(s) ran out" in server.log()
