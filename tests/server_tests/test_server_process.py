"""A real server process: ready line, CLI status/ping, signals, crash recovery, fuzzing."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import zmq
from server_testlib import READY_PREFIX, TIMEOUT_S, ReqClient, hello_body, report_body, run_cli

import autolrs
import autolrs.server
from autolrs.wire import protocol
from autolrs.actions import Observation
from autolrs.wire.protocol import ErrorCode
from autolrs.tuners import make_tuner

ERROR_CODES = {v for k, v in vars(ErrorCode).items() if k.isupper()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ready_line_ping_status_and_sigterm(server_process, req_client, tmp_path):
    p = server_process(tmp_path / "state")
    m = re.fullmatch(r"autolrs-server listening on (tcp://127\.0\.0\.1:(\d+)) state_dir=(.+)", p.ready_line)
    assert m and int(m.group(2)) > 0
    assert Path(m.group(3)) == (tmp_path / "state").resolve()

    ping = run_cli("ping", "--server", p.endpoint, "--timeout", "5")
    assert ping.returncode == 0 and "protocol 1" in ping.stdout, ping.stderr

    c = req_client(p.endpoint)
    assert c.call("hello", hello_body(config={"T_0": 10}), job_id="cifar-run-1", seq=0)["status"] == "ok"
    assert c.call("report", report_body(500, 500), job_id="cifar-run-1", seq=1)["status"] == "ok"

    # Without the admin token: each job's id and status only.
    status = run_cli("status", "--server", p.endpoint)
    assert status.returncode == 0, status.stderr
    header, row = status.stdout.splitlines()[2:4]
    assert header.split() == ["JOB", "STATUS"] and row.split() == ["cifar-run-1", "active"]
    # With it (the server wrote it into its state dir at start): every column.
    status = run_cli("status", "--server", p.endpoint, "--admin-token-file", str(tmp_path / "state" / "admin.token"))
    assert status.returncode == 0, status.stderr
    header, row = status.stdout.splitlines()[1:3]
    assert header.split() == ["JOB", "TUNER", "STATUS", "STEP", "LR", "REQUESTS", "UPDATED"]
    assert row.split()[:6] == ["cifar-run-1", "cosine", "active", "500", "0.1", "2"]

    raw = run_cli("status", "--server", p.endpoint, "--json")
    assert raw.returncode == 0
    reply = json.loads(raw.stdout)
    assert reply["status"] == "ok" and reply["body"]["sessions"][0]["job_id"] == "cifar-run-1"

    p.signal(signal.SIGTERM)
    assert p.wait() == 0
    assert "stopped" in p.log()
    state = protocol.loads((tmp_path / "state" / "jobs" / "cifar-run-1" / "state.json").read_bytes())
    assert state["step"] == 500 and state["last"]["seq"] == 1


def test_server_process_in_a_private_temp_folder_is_public_and_cleans_up(req_client):
    # The public way to run a server as a child process: no state folder given.
    with autolrs.server.ServerProcess(env={"AUTOLRS_TEST_MARKER": "1"}) as p:
        assert p.alive and p.endpoint == f"tcp://127.0.0.1:{p.port}"
        folder = p.state_dir.parent
        assert folder.name.startswith("autolrs-server-") and p.log_path.parent == folder
        assert req_client(p.endpoint).call("ping")["body"]["protocol"] == protocol.PROTOCOL_VERSION
    assert not p.alive and p.proc.returncode == 0
    assert not folder.exists()


def test_server_process_that_cannot_start_raises_with_the_log(tmp_path):
    (tmp_path / "bad.yaml").write_text("server: {workers: 0}\n")
    with pytest.raises(RuntimeError, match="server.workers"):
        # Closed at once should it start after all, so a failing test leaves no server behind.
        autolrs.server.ServerProcess(tmp_path / "state", "--config", str(tmp_path / "bad.yaml")).close()


def test_sigint_exits_cleanly(server_process):
    p = server_process()
    p.signal(signal.SIGINT)
    assert p.wait() == 0
    assert "Traceback" not in p.log()


def test_sigkill_then_restart_resumes_job(server_process, tmp_path):
    state_dir = tmp_path / "state"
    cfg = {"T_0": 12, "T_mult": 2, "chunk": 5}
    p1 = server_process(state_dir)
    c = ReqClient(p1.endpoint, client_id="trainer-1")
    try:
        assert c.call("hello", hello_body(config=cfg), job_id="job", seq=0)["status"] == "ok"
        for seq in range(1, 4):
            c.call("report", report_body(5 * seq, 5), job_id="job", seq=seq)
        last = protocol.dumps(protocol.request("report", report_body(20, 5), job_id="job",
                                               client_id="trainer-1", seq=4, credential=c.credentials["job"]))
        credentials = dict(c.credentials)
        last_reply = c.send_raw(last)
    finally:
        c.close()
    p1.signal(signal.SIGKILL)
    assert p1.wait() == -signal.SIGKILL

    p2 = server_process(state_dir)
    c = ReqClient(p2.endpoint, client_id="trainer-1")
    c.credentials = credentials
    try:
        # the resent request (its reply was lost with the old server) gets the identical reply
        assert c.send_raw(last) == last_reply
        nxt = c.call("report", report_body(25, 5), job_id="job", seq=5)
        status = c.call("status", credential=p2.admin_token())["body"]["sessions"][0]
    finally:
        c.close()
    # the schedule continues where it stood: same plan as a tuner that never stopped
    ref = make_tuner("cosine", {**cfg, "initial_lr": 0.1, "has_val_fn": False}, 0)
    for step in (5, 10, 15, 20, 25):
        ref.tell(Observation(step=step, steps=5))
    assert nxt["status"] == "ok" and nxt["body"]["plan"] == ref.ask()
    assert nxt["body"]["plan"][-1]["start_step"] == 25
    assert status["requests"] == 6 and status["step"] == 25
    lines = (state_dir / "jobs" / "job" / "decisions.jsonl").read_bytes().splitlines()
    assert len(lines) == 6


def fuzz_frames(rng: random.Random, limit: int) -> list[tuple[bytes, str]]:
    """REQ-shaped frames with the status each must get (a random mutation can make a valid ping)."""
    envelopes = [
        {"v": 0, "type": "ping_request"}, {"v": "1", "type": "ping_request"}, {"type": "ping_request"},
        {"v": 1}, {"v": 1, "type": 5}, {"v": 1, "type": "hello_reply"}, {"v": 1, "type": "fly_request"},
        {"v": 1, "type": "status_request", "body": "x"},
        {"v": 1, "type": "report_request", "job_id": 5, "client_id": "c", "seq": 1},
        {"v": 1, "type": "report_request", "job_id": "a" * 200, "client_id": "c", "seq": 1},
        {"v": 1, "type": "report_request", "job_id": "j", "client_id": "c" * 65, "seq": 1},
        {"v": 1, "type": "report_request", "job_id": "j", "client_id": "c", "seq": 1.5},
        {"v": 1, "type": "report_request", "job_id": "j", "client_id": "c", "seq": "1"},
        {"v": 1, "type": "report_request", "job_id": "fuzz", "client_id": "c", "seq": 1, "body": {"step": 1}},
        {"v": 1, "type": "goodbye_request", "job_id": "fuzz", "client_id": "c", "seq": 1},
        {"v": 1, "type": "hello_request", "job_id": "fuzz", "client_id": "c", "seq": 1, "body": {}},
        {"v": 1, "type": "hello_request", "job_id": "fuzz", "client_id": "c", "seq": 1,
         "body": {"tuner": "nope", "initial_lr": 0.1}},
        {"v": 1, "type": "hello_request", "job_id": "fuzz", "client_id": "c", "seq": 1,
         "body": {"tuner": "cosine", "initial_lr": 0.1, "config": {"T_0": -1}}},
        {"v": 1, "type": "hello_request", "job_id": "fuzz", "client_id": "c", "seq": 1,
         "body": {"tuner": "cosine", "initial_lr": "fast"}},
    ]
    texts = [b"", b"{", b"null", b"[]", b"42", b'"str"', b"{\"v\": 1, \"type\": \"ping_request\", \"x\": NaN}",
             b"[" * 50000, b'{"v": 1, "type": {"$float": "nan"}}', b'{"a": {"$float": "big"}}']
    frames = []
    for i in range(800):
        kind = i % 4
        if kind == 0:
            frames.append((bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300))), "error"))
        elif kind == 1:
            frames.append((rng.choice(texts), "error"))
        elif kind == 2:
            frames.append((protocol.dumps(rng.choice(envelopes)), "error"))
        else:  # an envelope with one field replaced by a random value
            env = dict(rng.choice(envelopes))
            env[rng.choice(["v", "type", "job_id", "seq", "client_id", "body"])] = rng.choice(
                [None, -1, 3.5, "", [], {}, True, "x" * 300])
            frames.append((protocol.dumps(env), _expected_status(env)))
    frames[::100] = [(b"x" * (limit + 1), "error")] * len(frames[::100])  # just too large
    return frames


def _expected_status(env: dict) -> str:
    try:
        kind, _ = protocol.validate_request(env)
    except protocol.ProtocolError:
        return "error"
    # Only a well-formed ping/status can succeed: every job request above lacks a valid body or job.
    return "ok" if kind in ("ping", "status") else "error"


def test_fuzz_1000_frames(server_process):
    p = server_process()
    rng = random.Random(1234)
    limit = 1048576
    c = ReqClient(p.endpoint)
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(p.endpoint)
    try:
        codes = set()
        frames = fuzz_frames(rng, limit)
        assert sum(expected == "error" for _, expected in frames) > 750
        for i, (frame, expected) in enumerate(frames):
            reply = json.loads(c.send_raw(frame))  # every reply is standard JSON
            assert reply["v"] == 1 and reply["status"] == expected, (frame[:200], reply)
            if expected == "error":
                assert reply["error"]["code"] in ERROR_CODES
                codes.add(reply["error"]["code"])
            if i % 4 == 0:  # interleave 200 odd multipart shapes from a DEALER
                n = rng.randint(1, 20)
                dealer.send_multipart([os.urandom(rng.randint(0, 64)) for _ in range(n)])
            if i % 200 == 0:
                assert c.call("ping")["status"] == "ok"
        # one frame far above the memory guard: that peer is cut off, nobody else
        dealer.send_multipart([b"", b"z" * (8 * limit)])
        assert {"malformed", "too_large", "unsupported_version", "bad_request", "unknown_type",
                "unknown_job", "unknown_tuner", "bad_config"} <= codes
        assert c.call("ping")["status"] == "ok"
        assert c.call("status")["body"]["server"]["sessions"] == 0
    finally:
        dealer.close(0)
        ctx.term()
        c.close()
    assert p.proc.poll() is None
    assert "Traceback" not in p.log()


def test_config_file_tuner_defaults_applied(server_process, tmp_path, req_client):
    cfg = tmp_path / "server.yaml"
    cfg.write_text("server:\n  max_message_bytes: 4096\ntuners:\n  cosine:\n    T_0: 4\n    chunk: 8\n")
    p = server_process(tmp_path / "state", "--config", str(cfg))
    c = req_client(p.endpoint)
    lrs = c.call("hello", hello_body(), job_id="j", seq=0)["body"]["plan"][-1]["lrs"]
    assert len(lrs) == 8 and lrs[4] == lrs[0] == 0.1 and lrs[3] < 0.1
    reply = protocol.loads(c.send_raw(b" " * 5000))
    assert reply["error"]["code"] == "too_large"


def test_command_line_beats_config_file(server_process, tmp_path, req_client):
    state = tmp_path / "from-cli"
    cfg = tmp_path / "server.yaml"
    cfg.write_text(f"server:\n  state_dir: {tmp_path / 'from-yaml'}\n  port: 1\n")
    p = server_process(state, "--config", str(cfg))  # --port 0 and --state-dir win
    assert p.ready_line.endswith(f"state_dir={state.resolve()}")
    assert req_client(p.endpoint).call("ping")["status"] == "ok"


def test_unknown_yaml_key_is_a_clear_error(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("server:\n  prot: 6000\n")
    r = run_cli("--port", "0", "--state-dir", str(tmp_path / "s"), "--config", str(cfg))
    assert r.returncode != 0
    assert "unknown key 'server.prot'" in r.stderr and str(cfg) in r.stderr
    assert READY_PREFIX not in r.stdout
    r = run_cli("serve", "--port", "0", "--config", str(tmp_path / "missing.yaml"))
    assert r.returncode != 0 and "cannot read config file" in r.stderr


def test_second_server_on_same_state_dir_refused(server_process, tmp_path):
    server_process(tmp_path / "state")
    r = run_cli("--port", "0", "--state-dir", str(tmp_path / "state"))
    assert r.returncode == 1 and "in use" in r.stderr


def test_status_and_ping_without_server_fail_fast():
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    for cmd in ("status", "ping"):
        r = run_cli(cmd, "--server", endpoint, "--timeout", "0.3", timeout=60)  # interpreter start-up under load, not the 0.3 s being tested
        assert r.returncode == 1 and "no answer" in r.stderr


def test_server_never_imports_torch():
    code = ("import sys, autolrs.server.cli, autolrs.server.transport, autolrs.server.dispatcher; "
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]; "
            "assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


def test_bare_server_import_refused():
    root = Path(autolrs.server.__file__).resolve().parent.parent
    if not (root / "server" / "__init__.py").exists():
        pytest.skip("not running from a source checkout")
    r = subprocess.run([sys.executable, "-c", "import server"], cwd=root, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode != 0 and "must be imported as 'autolrs.server'" in r.stderr


def test_help_and_version():
    assert run_cli("--help").returncode == 0
    r = run_cli("--version")
    assert r.returncode == 0 and autolrs.__version__ in r.stdout
    exe = shutil.which("autolrs-server")
    if exe:
        r = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and "protocol 1" in r.stdout


