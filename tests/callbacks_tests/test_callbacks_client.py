"""The Lazy Pirate client against a scripted ZeroMQ peer (every wait has a timeout)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autolrs.wire import protocol
from autolrs.callbacks import ServerError, ServerUnavailable
from autolrs.callbacks.client import Client
from autolrs.testing.peer import free_port
from callbacks_testlib import peer  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[2]


def echo(req):
    return protocol.ok_reply(req, {"echo": req["body"], "seq": req["seq"]})


def test_request_reply_envelope_and_seq(peer):
    p = peer(echo)
    with Client(p.endpoint, "job-1", timeout=2.0) as c:
        assert len(c.client_id) == 32 and int(c.client_id, 16) >= 0
        assert c.request("hello", {"x": 1}) == {"echo": {"x": 1}, "seq": 0}
        assert c.request("report", {"y": [1.5, float("nan")]})["seq"] == 1
        assert not c.pending
    first, second = p.received
    assert first["type"] == "hello_request" and first["job_id"] == "job-1" and first["seq"] == 0
    assert first["client_id"] == second["client_id"] and second["seq"] == 1
    assert second["body"]["y"][1] != second["body"]["y"][1]  # NaN survived the wire
    with Client(p.endpoint, "job-1") as other:
        assert other.client_id != first["client_id"]  # random per Client


def test_dropped_request_is_resent_with_the_same_seq(peer):
    seen = []

    def drop_first(req):
        seen.append(req["seq"])
        return None if len(seen) == 1 else echo(req)

    p = peer(drop_first)
    with Client(p.endpoint, "job-1", timeout=1.5) as c:
        t0 = time.monotonic()
        assert c.request("report", {"n": 1}) == {"echo": {"n": 1}, "seq": 0}
        assert time.monotonic() - t0 < 1.5
    a, b = p.received
    assert a["seq"] == b["seq"] == 0 and a["client_id"] == b["client_id"] and a["body"] == b["body"]


def test_error_reply_raises_server_error(peer):
    p = peer(lambda req: protocol.error_reply(req, protocol.ErrorCode.UNKNOWN_JOB, "no such job"))
    with Client(p.endpoint, "job-1", timeout=2.0) as c:
        with pytest.raises(ServerError) as info:
            c.request("report", {})
        assert info.value.code == "unknown_job" and info.value.message == "no such job"
        assert not c.pending


def test_seqless_error_reply_is_accepted(peer):
    # A server that cannot read a request (too large) cannot echo its seq.
    p = peer(lambda req: protocol.error_reply(None, protocol.ErrorCode.TOO_LARGE, "too big"))
    with Client(p.endpoint, "job-1", timeout=2.0) as c:
        with pytest.raises(ServerError) as info:
            c.request("report", {})
        assert info.value.code == "too_large"


@pytest.mark.parametrize("bad", ["wrong-seq", "garbage", "other-job", "ok-without-seq"])
def test_replies_that_do_not_answer_the_request_are_discarded(peer, bad):
    calls = []

    def handler(req):
        calls.append(req)
        if len(calls) > 1:
            return echo(req)
        if bad == "wrong-seq":
            return protocol.ok_reply({**req, "seq": req["seq"] + 7}, {"wrong": True})
        if bad == "other-job":
            return protocol.ok_reply({**req, "job_id": "someone-else"}, {"wrong": True})
        if bad == "ok-without-seq":
            return protocol.ok_reply({"type": req["type"]}, {"wrong": True})
        return b"\xff not json"

    p = peer(handler)
    with Client(p.endpoint, "job-1", timeout=1.5) as c:
        assert c.request("hello", {}) == {"echo": {}, "seq": 0}
    assert len(calls) == 2 and calls[0]["seq"] == calls[1]["seq"]


def test_timeout_keeps_the_request_pending_and_a_late_server_answers():
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    with Client(endpoint, "job-1", timeout=0.3) as c:
        t0 = time.monotonic()
        with pytest.raises(ServerUnavailable):
            c.request("hello", {"n": 1})
        assert 0.25 < time.monotonic() - t0 < 1.0
        assert c.pending and c.pending_kind == "hello" and c.pending_seq == 0
        assert c.poll_reply(0) is None

        from autolrs.testing.peer import ScriptedPeer

        p = ScriptedPeer(echo, port=port)  # the server comes up on that port
        try:
            deadline = time.monotonic() + 5.0
            reply = None
            while reply is None and time.monotonic() < deadline:
                reply = c.poll_reply(0.1)
                if reply is None:
                    c.resend()
            assert reply == {"echo": {"n": 1}, "seq": 0}
            assert not c.pending
            assert {r["seq"] for r in p.received} == {0}
        finally:
            p.close()


def test_non_blocking_send_poll_and_abandon(peer):
    def slow(req):
        time.sleep(0.2)
        return echo(req)

    p = peer(slow)
    with Client(p.endpoint, "job-1", timeout=2.0) as c:
        assert c.send("hello", {"a": 1}) == 0
        assert c.pending and c.poll_reply(0) is None
        deadline = time.monotonic() + 3.0
        reply = None
        while reply is None and time.monotonic() < deadline:
            reply = c.poll_reply(0.05)
        assert reply == {"echo": {"a": 1}, "seq": 0}
        # A new send abandons a pending request; its late reply is never read as the new one's.
        c.send("report", {"b": 1})
        c.send("report", {"b": 2})
        assert c.request("report", {"b": 3}) == {"echo": {"b": 3}, "seq": 3}
    assert c.closed and not c.pending
    c.close()


def test_invalid_arguments():
    with pytest.raises(ValueError):
        Client("tcp://127.0.0.1:5555", "bad job id")
    with pytest.raises(ValueError):
        Client("not-an-endpoint", "job-1")
    with pytest.raises(ValueError):
        Client("tcp://127.0.0.1:5555", "job-1", timeout=0)


def test_client_imports_no_torch_and_bare_package_name_is_refused():
    code = ("import sys, autolrs.callbacks.client, autolrs.callbacks; "
            "from autolrs.callbacks import ServerUnavailableWarning, Client; "
            "assert 'torch' not in sys.modules, 'torch was imported'; "
            "assert not any(m.startswith(('autolrs.server', 'autolrs.tuners')) for m in sys.modules)")
    env = {**os.environ, "PYTHONPATH": ""}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)
    bare = subprocess.run([sys.executable, "-c", "import callbacks"], cwd=ROOT, env=env, timeout=60,
                          capture_output=True, text=True)
    assert bare.returncode != 0 and "autolrs.callbacks" in bare.stderr
