"""The ZeroMQ loop in a thread: REQ round trips, garbage multipart shapes, prompt stop."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import zmq
from server_testlib import TIMEOUT_S, hello_body, make_config, report_body

from autolrs.wire import protocol
from autolrs.server.transport import make_server


def test_endpoint_has_real_port(thread_server):
    assert thread_server.endpoint.startswith("tcp://127.0.0.1:")
    assert int(thread_server.endpoint.rsplit(":", 1)[1]) > 0


def test_req_round_trip(thread_server, req_client):
    c = req_client(thread_server.endpoint)
    assert c.call("ping")["body"]["protocol"] == protocol.PROTOCOL_VERSION
    plan = c.call("hello", hello_body(config={"T_0": 10, "chunk": 5}), job_id="j", seq=0)["body"]["plan"]
    assert plan[-1]["steps"] == 5
    assert c.call("report", report_body(5, 5), job_id="j", seq=1)["body"]["plan"][-1]["start_step"] == 5
    admin = (Path(thread_server.dispatcher.store.state_dir) / "admin.token").read_text().strip()
    assert c.call("status", credential=admin)["body"]["sessions"][0]["step"] == 5
    assert c.call("status")["body"]["sessions"] == [{"job_id": "j", "status": "active"}]


def test_many_clients_at_once(thread_server, req_client):
    clients = [req_client(thread_server.endpoint) for _ in range(8)]
    errors = []

    def drive(i, c):
        try:
            job = f"job-{i}"
            assert c.call("hello", hello_body(config={"chunk": 2}), job_id=job, seq=0)["status"] == "ok"
            for seq in range(1, 11):
                r = c.call("report", report_body(2 * seq, 2), job_id=job, seq=seq)
                assert r["body"]["plan"][-1]["start_step"] == 2 * seq
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=drive, args=(i, c)) for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT_S * 2)
    assert not errors
    assert {s.job_id: s.step for s in thread_server.dispatcher.store} == {f"job-{i}": 20 for i in range(8)}


def test_dealer_garbage_frames(thread_server, req_client):
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.RCVTIMEO, 2000)
    dealer.connect(thread_server.endpoint)
    try:
        # three random frames: the last is taken as the payload, the rest echoed back
        a, b, payload = os.urandom(8), os.urandom(3), os.urandom(40)
        dealer.send_multipart([a, b, payload])
        got = dealer.recv_multipart()
        assert got[:2] == [a, b]
        reply = protocol.loads(got[2])
        assert reply["status"] == "error" and reply["error"]["code"] == "malformed"
        # one frame (no REQ delimiter): answered as one frame
        dealer.send(protocol.dumps(protocol.request("ping")))
        assert protocol.loads(dealer.recv())["status"] == "ok"
        # too many frames: dropped unanswered
        dealer.send_multipart([b"x"] * 40)
        dealer.setsockopt(zmq.RCVTIMEO, 300)
        with pytest.raises(zmq.Again):
            dealer.recv()
    finally:
        dealer.close(0)
        ctx.term()
    assert req_client(thread_server.endpoint).call("ping")["status"] == "ok"


def test_frame_above_memory_guard_disconnects_peer_only(thread_server, req_client):
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.RCVTIMEO, 500)
    dealer.connect(thread_server.endpoint)
    try:
        dealer.send_multipart([b"", b"x" * (8 * thread_server.config.max_message_bytes)])
        with pytest.raises(zmq.Again):
            dealer.recv()
    finally:
        dealer.close(0)
        ctx.term()
    assert req_client(thread_server.endpoint).call("ping")["status"] == "ok"


def test_stop_is_prompt_and_close_releases_port_and_lock(tmp_path):
    server = make_server(make_config(tmp_path / "state"))
    thread = server.serve_in_thread()
    time.sleep(0.05)
    t0 = time.monotonic()
    server.stop()
    thread.join(TIMEOUT_S)
    assert not thread.is_alive() and time.monotonic() - t0 < 1.0
    port = int(server.endpoint.rsplit(":", 1)[1])
    server.close()
    server.close()  # idempotent
    # the same port and state dir can be taken again at once
    again = make_server(make_config(tmp_path / "state", port=port))
    try:
        assert again.endpoint == server.endpoint
    finally:
        again.close()


def test_close_without_serving(tmp_path):
    with make_server(make_config(tmp_path / "state")) as server:
        assert server.endpoint
    with pytest.raises(RuntimeError):
        server.serve_forever()


def test_port_in_use_releases_state_dir(tmp_path, thread_server):
    port = int(thread_server.endpoint.rsplit(":", 1)[1])
    with pytest.raises(zmq.ZMQError):
        make_server(make_config(tmp_path / "other", port=port))
    make_server(make_config(tmp_path / "other")).close()  # the lock was released
