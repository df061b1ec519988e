"""Authentication: a server with a shared secret refuses unsigned, badly signed, altered, stale
and replayed requests (error reply, no session), and serves the callback that signs."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch
import zmq
from server_testlib import TIMEOUT_S, hello_body, report_body, run_cli

from autolrs.wire import auth, protocol
from autolrs.callbacks import AutoLRS, AutoLRSConfigError
from autolrs.callbacks.client import Client, ServerError, ServerUnavailable
from autolrs.wire.protocol import ErrorCode

from multijob_testlib import SECRET


def raw_call(endpoint: str, frames: list[bytes]) -> dict:
    """Send frames on a fresh REQ socket and decode the one-frame reply (with a timeout)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, int(TIMEOUT_S * 1000))
    try:
        sock.connect(endpoint)
        sock.send_multipart(frames)
        return protocol.loads(sock.recv())
    finally:
        sock.close(0)
        ctx.term()


def hello_frame(job: str, seq: int = 0) -> bytes:
    return protocol.dumps(protocol.request("hello", hello_body(config={"T_0": 100, "chunk": 10}), job_id=job,
                                           client_id="client-a", seq=seq))


def refused(reply: dict, words: str) -> None:
    assert reply["status"] == "error" and reply["error"]["code"] == ErrorCode.UNAUTHENTICATED, reply
    assert words in reply["error"]["message"]


def jobs_on_disk(state_dir) -> list[str]:
    jobs = state_dir / "jobs"
    return sorted(p.name for p in jobs.iterdir()) if jobs.exists() else []


def test_unsigned_wrong_altered_stale_and_replayed_requests_are_refused(live_server, secret_file, tmp_path):
    state = tmp_path / "state"
    server = live_server(state, "--secret-file", str(secret_file))
    key = SECRET.encode()
    frame = hello_frame("job-a")

    refused(raw_call(server.endpoint, [frame]), "no signature")
    refused(raw_call(server.endpoint, [frame, auth.sign(b"another-secret-of-enough-length", frame)]),
            "bad signature")
    other = hello_frame("job-b")
    refused(raw_call(server.endpoint, [other, auth.sign(key, frame)]), "bad signature")  # payload swapped
    refused(raw_call(server.endpoint, [frame, auth.sign(key, frame, now=time.time() - 3600)]), "clock")
    refused(raw_call(server.endpoint, [frame, b"autolrs-hmac1 garbage"]), "malformed")
    assert jobs_on_disk(state) == []  # nothing was created

    signature = auth.sign(key, frame)
    assert raw_call(server.endpoint, [frame, signature])["status"] == "ok"
    refused(raw_call(server.endpoint, [frame, signature]), "replayed")
    assert jobs_on_disk(state) == ["job-a"]

    # a signed status (with the admin token) shows the replay changed nothing: one request applied
    with Client(server.endpoint, "probe", secret=SECRET, credential=server.admin_token()) as client:
        sessions = client.request("status")["sessions"]
    assert [(s["job_id"], s["requests"]) for s in sessions] == [("job-a", 1)]


def test_client_signs_every_resend_and_the_cli_needs_the_secret(live_server, secret_file, tmp_path):
    server = live_server(tmp_path / "state", "--secret-file", str(secret_file))
    with Client(server.endpoint, "job-c", secret=SECRET) as client:
        assert client.request("hello", hello_body(config={"T_0": 100, "chunk": 10}))["resumed"] is False
        # a lazy-pirate resend of the same seq on a fresh socket: signed afresh (not a replay),
        # answered, and applied once (the copy that comes second gets the cached reply)
        client.send("report", report_body(10, 10))
        time.sleep(0.2)
        client.resend()
        assert client.poll_reply(TIMEOUT_S)["plan"][-1]["start_step"] == 10
    with Client(server.endpoint, "job-c", secret="not-the-secret-but-long-enough") as intruder:
        with pytest.raises(ServerError) as exc:
            intruder.request("report", report_body(20, 10))
        assert exc.value.code == ErrorCode.UNAUTHENTICATED

    assert run_cli("status", "--server", server.endpoint).returncode == 1
    ok = run_cli("status", "--server", server.endpoint, "--secret-file", str(secret_file))
    assert ok.returncode == 0 and "job-c" in ok.stdout and "active" in ok.stdout
    with Client(server.endpoint, "probe", secret=SECRET, credential=server.admin_token()) as client:
        assert client.request("status")["sessions"][0]["requests"] == 2  # hello + one report


def test_callback_trains_through_a_signed_server(live_server, secret_file, tmp_path, digits, mlp, monkeypatch):
    server = live_server(tmp_path / "state", "--secret-file", str(secret_file))
    monkeypatch.setenv("AUTOLRS_SECRET_FILE", str(secret_file))  # how a user would pass it
    x, y = digits
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with AutoLRS(model, optimizer, tuner="step", config={"step_size": 20, "gamma": 0.5, "chunk": 15},
                 server=server.endpoint, job="signed-run", timeout=TIMEOUT_S) as cb:
        for i in range(50):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[i * 32:(i + 1) * 32]), y[i * 32:(i + 1) * 32])
            loss.backward()
            optimizer.step()
            cb.step(loss)
        assert cb.online
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5 ** 2)
    assert "refused a request" not in server.log()
    # a wrong secret is a configuration error, raised before any training
    with pytest.raises(AutoLRSConfigError, match="unauthenticated"):
        AutoLRS(model, optimizer, tuner="constant", server=server.endpoint, job="wrong-secret",
                timeout=TIMEOUT_S, secret="a-wrong-secret-of-enough-length")
    assert not (tmp_path / "state" / "jobs" / "wrong-secret").exists()


def test_non_loopback_bind_needs_a_secret_or_insecure(tmp_path):
    cmd = [sys.executable, "-m", "autolrs.server", "--host", "0.0.0.0", "--port", "0",
           "--state-dir", str(tmp_path / "state")]
    refused_bind = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert refused_bind.returncode == 2 and "without a shared secret" in refused_bind.stderr
    proc = subprocess.Popen(cmd + ["--insecure"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("autolrs-server listening on tcp://0.0.0.0:")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert "WITHOUT a shared secret" in err


def test_secret_sources_and_verifier_rules(tmp_path):
    path = tmp_path / "s"
    path.write_text("  file-secret-0123456789  \n")
    assert auth.resolve_secret(None, None, env={}) is None
    assert auth.resolve_secret("explicit-secret-0123", path, env={"AUTOLRS_SECRET": "x" * 20}) == b"explicit-secret-0123"
    assert auth.resolve_secret(None, path, env={"AUTOLRS_SECRET": "x" * 20}) == b"file-secret-0123456789"
    assert auth.resolve_secret(None, None, env={"AUTOLRS_SECRET": "y" * 20,
                                                "AUTOLRS_SECRET_FILE": str(path)}) == b"y" * 20
    assert auth.resolve_secret(None, None, env={"AUTOLRS_SECRET_FILE": str(path)}) == b"file-secret-0123456789"
    with pytest.raises(auth.SecretError, match="at least 16"):
        auth.resolve_secret("short")
    with pytest.raises(auth.SecretError, match="cannot read"):
        auth.resolve_secret(None, tmp_path / "missing")

    key = b"k" * 32
    verifier = auth.Verifier(key, window=10)
    payload = b'{"v":1}'
    t0 = 1_800_000_000.0
    signature = auth.sign(key, payload, now=t0)
    verifier.verify(payload, signature, now=t0 + 5)
    with pytest.raises(auth.AuthError, match="replayed"):
        verifier.verify(payload, signature, now=t0 + 6)
    with pytest.raises(auth.AuthError, match="clock"):  # after the window: the timestamp, not the nonce
        verifier.verify(payload, signature, now=t0 + 25)
    verifier.verify(payload, auth.sign(key, payload, now=t0 + 26), now=t0 + 26)
    assert len(verifier) == 1  # nonces older than twice the window are forgotten
    with pytest.raises(auth.AuthError, match="clock"):
        verifier.verify(payload, auth.sign(key, payload, now=t0 + 11), now=t0)
    assert auth.split_frames([b"id", b"", payload, signature]) == ([b"id", b""], payload, signature)
    assert auth.split_frames([b"id", b"", payload]) == ([b"id", b""], payload, None)


def test_curve_encryption_with_signed_requests(live_server, secret_file, tmp_path):
    keys = tmp_path / "keys"
    made = run_cli("keygen", str(keys))
    assert made.returncode == 0 and (keys / "server.key_secret").exists()
    server = live_server(tmp_path / "state", "--secret-file", str(secret_file),
                         "--curve-secret-key-file", str(keys / "server.key_secret"))
    with Client(server.endpoint, "curve-job", secret=SECRET, server_key=str(keys / "server.key")) as client:
        assert client.request("hello", hello_body(config={"T_0": 100, "chunk": 10}))["resumed"] is False
    # without the server's key there is no handshake, so no answer at all
    with Client(server.endpoint, "curve-job", timeout=1.0, secret=SECRET) as plain:
        with pytest.raises(ServerUnavailable):
            plain.request("ping")
    ok = run_cli("status", "--server", server.endpoint, "--secret-file", str(secret_file),
                 "--server-key", str(keys / "server.key"))
    assert ok.returncode == 0 and "curve-job" in ok.stdout
