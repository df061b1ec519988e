"""No request stops the server: 10,000 validly signed frames whose auth headers are random, and
10,000 malformed envelopes, sent to a real server process in batches of 1,000 from a DEALER
socket. After every batch each frame has had exactly one reply and the server answers a ping;
at the end it is alive and its log holds no traceback."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import string

import pytest
import zmq
from server_testlib import TIMEOUT_S, ServerProcess

from autolrs.wire import auth, protocol
from autolrs.wire.protocol import ErrorCode

ERROR_CODES = {v for k, v in vars(ErrorCode).items() if k.isupper()}
SECRET = b"fuzz-test-secret-0123456789abcdef"
BATCHES, BATCH = 10, 1000


class Dealer:
    """Many requests in flight at once; each reply read with a timeout."""

    def __init__(self, endpoint: str):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.connect(endpoint)

    def batch(self, messages: list[list[bytes]]) -> list[dict]:
        """Send every message (REQ-shaped: an empty delimiter first) and read one reply each."""
        for frames in messages:
            self.sock.send_multipart([b"", *frames])
        replies = []
        while len(replies) < len(messages):
            assert self.sock.poll(int(TIMEOUT_S * 1000 * 6)), f"{len(replies)} of {len(messages)} replies came back"
            frames = self.sock.recv_multipart()
            assert len(frames) == 2 and frames[0] == b"", frames
            replies.append(json.loads(frames[1]))  # standard JSON, whatever the request was
        return replies

    def close(self):
        self.sock.close(0)
        self.ctx.term()


def signed(payload: bytes, header: bytes) -> bytes:
    """An auth frame with ``header`` (whatever it holds) and the right MAC over it and the payload."""
    mac = hmac.new(SECRET, header + b"\n", hashlib.sha256)
    mac.update(payload)
    return header + b" " + mac.hexdigest().encode("ascii")


def random_header(rng: random.Random) -> bytes:
    """``autolrs-hmac1`` and then anything: numbers of any length (a 400-digit timestamp ended
    the server once), wrong nonces, extra or missing fields, odd bytes."""
    digits = lambda n: "".join(rng.choice(string.digits) for _ in range(n))  # noqa: E731
    hexes = lambda n: "".join(rng.choice("0123456789abcdef") for _ in range(n))  # noqa: E731
    choice = rng.randrange(8)
    if choice == 0:
        ts = digits(rng.choice([17, 20, 400, 4301, 5000, rng.randint(1, 60)]))
        return f"autolrs-hmac1 {ts} {hexes(32)}".encode()
    if choice == 1:
        ts = rng.choice(["-5", "+7", "1e9", "0x10", "１２３", "٣", " ", "", "9" * 16, "nan", "inf"])
        return f"autolrs-hmac1 {ts} {hexes(32)}".encode()
    if choice == 2:
        nonce = rng.choice([hexes(31), hexes(33), hexes(32).upper(), "g" * 32, "", hexes(64), "é" * 16])
        return f"autolrs-hmac1 {digits(13)} {nonce}".encode()
    if choice == 3:
        return b"autolrs-hmac1 " + b" ".join(digits(rng.randint(0, 20)).encode() for _ in range(rng.randint(0, 6)))
    if choice == 4:
        return b"autolrs-hmac1 " + bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 200)))
    if choice == 5:  # the right shape, a clock far away
        ts = int(rng.choice([0, 1, 10**15, 9999999999999999]))
        return f"autolrs-hmac1 {ts} {hexes(32)}".encode()
    if choice == 6:
        return f"autolrs-hmac1  {digits(13)}  {hexes(32)}".encode()
    return f"autolrs-hmac1 {digits(13)}\n{hexes(32)}".encode()


def test_signed_frames_with_valid_macs_over_random_headers(tmp_path):
    server = ServerProcess(tmp_path / "state", env={"AUTOLRS_SECRET": SECRET.decode()})
    dealer = Dealer(server.endpoint)
    rng = random.Random(15)
    payloads = [protocol.dumps(protocol.request("ping")), protocol.dumps(protocol.request("status")),
                protocol.dumps(protocol.request("report", {"step": 1}, job_id="j", client_id="c", seq=1)),
                b"{", bytes(range(256))]
    try:
        for _ in range(BATCHES):
            messages = []
            for _ in range(BATCH):
                payload = rng.choice(payloads)
                messages.append([payload, signed(payload, random_header(rng))])
            replies = dealer.batch(messages)
            assert {r["status"] for r in replies} == {"error"}
            assert {r["error"]["code"] for r in replies} == {ErrorCode.UNAUTHENTICATED}
            ping = protocol.dumps(protocol.request("ping"))
            (answer,) = dealer.batch([[ping, auth.sign(SECRET, ping)]])
            assert answer["status"] == "ok", answer
        assert server.alive
    finally:
        dealer.close()
        server.close()
    log = server.log()
    assert "Traceback" not in log
    assert "refused a request" in log  # said, but not 10,000 times: the refusals are rate-limited
    assert log.count("refused a request") < 100


# --- malformed envelopes -------------------------------------------------------------------------

JOBS = [f"fz-{i}" for i in range(8)]
#: Raw JSON numbers that standard JSON accepts and a bounded protocol must not.
RAW_NUMBERS = ["1" * 400, "-" + "9" * 30, "1e999", "-1e400", "9223372036854775808", "1" * 4400, "0.5e-400",
               "123456789012345678901234567890.5"]
TEMPLATES = [
    ("hello", {"tuner": "cosine", "config": {"T_0": 10, "chunk": 5}, "initial_lr": 0.1, "param_groups": 1,
               "step": 0, "max_steps": 100, "has_val_fn": False, "seed": 3}),
    ("hello", {"tuner": "autolrs", "config": {"k": 3, "tau": 6}, "initial_lr": 0.1, "max_steps": 200}),
    ("hello", {"tuner": "range_test", "config": {"num_iter": 10, "chunk": 5}, "initial_lr": 0.01}),
    ("hello", {"tuner": "hd", "config": {"every": 4}, "initial_lr": 0.1}),
    ("hello", {"tuner": "auto", "config": {}, "initial_lr": 0.1, "max_steps": 300}),
    ("report", {"step": 5, "steps": 5, "losses": [1.0, 0.9, 0.8, 0.7, 0.6], "evals": [[5, 0.5]], "lr": 0.1}),
    ("report", {"step": 10, "steps": 5, "losses": [], "evals": [], "hypergrad": {"h": [0.1], "vb": None}}),
    ("goodbye", {"step": 10, "reason": "done", "lr": 0.1}),
    ("status", {}),
    ("ping", {}),
]


def random_value(rng: random.Random, depth: int = 0):
    kinds = ["none", "bool", "int", "big", "float", "tiny", "str", "newline", "list", "dict", "nan", "deep"]
    kind = rng.choice(kinds if depth < 3 else kinds[:8])
    if kind == "none":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "int":
        return rng.choice([0, -1, 1, 3, 10**6, 2**31, -(2**40), 2**63 - 1])
    if kind == "big":
        return "@RAW@"  # replaced by a raw number after encoding
    if kind == "float":
        return rng.choice([0.0, -0.0, 1e-320, 1e308, -1e308, 0.1, 3.5])
    if kind == "tiny":
        return rng.choice(["", "0.1", "1e-3", "x" * 300, "..", "é", "\u0000"])
    if kind == "str":
        return "".join(rng.choice(string.printable) for _ in range(rng.randint(0, 40)))
    if kind == "newline":
        return rng.choice(JOBS) + "\n"
    if kind == "list":
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 5))]
    if kind == "dict":
        return {rng.choice(["T_0", "chunk", "k", "tau", "lr", "x", "$float"]): random_value(rng, depth + 1)
                for _ in range(rng.randint(0, 4))}
    if kind == "nan":
        return {"$float": rng.choice(["nan", "inf", "-inf", "huge", 1])}
    return [[[[[[[[[[rng.random()]]]]]]]]]]


def mutate(rng: random.Random, obj, depth: int = 0):
    """``obj`` with one to three random changes somewhere inside it."""
    if isinstance(obj, dict) and obj and rng.random() < 0.85:
        key = rng.choice(list(obj))
        out = dict(obj)
        action = rng.randrange(4)
        if action == 0:
            del out[key]
        elif action == 1 or depth > 2:
            out[key] = random_value(rng)
        else:
            out[key] = mutate(rng, obj[key], depth + 1)
        if rng.random() < 0.2:
            out[rng.choice(["extra", "body", "credential", "seq", "v"])] = random_value(rng)
        return out
    if isinstance(obj, list) and obj and rng.random() < 0.8:
        out = list(obj)
        out[rng.randrange(len(out))] = random_value(rng)
        return out
    return random_value(rng)


def malformed_envelope(rng: random.Random, credentials: dict[str, str]) -> bytes:
    kind, body = rng.choice(TEMPLATES)
    job = rng.choice(JOBS) if rng.random() < 0.9 else f"fz-new-{rng.randrange(30)}"  # new jobs too
    env = protocol.request(kind, body, job_id=job, client_id=f"fuzz-{rng.randrange(3)}", seq=rng.randrange(50),
                           credential=credentials.get(job) if rng.random() < 0.7 else None)
    for _ in range(rng.randint(1, 3)):
        env = mutate(rng, env)
    try:
        text = json.dumps(env, allow_nan=False)
    except (TypeError, ValueError):
        text = "{"
    while "\"@RAW@\"" in text:
        text = text.replace("\"@RAW@\"", rng.choice(RAW_NUMBERS), 1)
    if rng.random() < 0.05:  # cut short
        text = text[: rng.randrange(len(text) + 1)]
    return text.encode("utf-8", "surrogatepass")


def test_malformed_envelopes(tmp_path):
    server = ServerProcess(tmp_path / "state")
    dealer = Dealer(server.endpoint)
    rng = random.Random(16)
    credentials: dict[str, str] = {}
    statuses, codes = {"ok": 0, "error": 0}, set()
    try:
        # Real jobs first, so that reports and goodbyes with their credentials reach the tuners.
        for job in JOBS:
            kind, body = TEMPLATES[JOBS.index(job) % 5]
            (reply,) = dealer.batch([[protocol.dumps(protocol.request(kind, body, job_id=job, client_id="owner",
                                                                      seq=0))]])
            assert reply["status"] == "ok", reply
            credentials[job] = reply["body"]["credential"]
        for _ in range(BATCHES):
            replies = dealer.batch([[malformed_envelope(rng, credentials)] for _ in range(BATCH)])
            for reply in replies:
                statuses[reply["status"]] += 1
                if reply["status"] == "error":
                    codes.add(reply["error"]["code"])
                body = reply.get("body") or {}
                if reply.get("type") == "hello_reply" and body.get("credential"):
                    credentials[reply["job_id"]] = body["credential"]
            (ping,) = dealer.batch([[protocol.dumps(protocol.request("ping"))]])
            assert ping["status"] == "ok", ping
        assert server.alive
    finally:
        dealer.close()
        server.close()
    assert codes <= ERROR_CODES and ErrorCode.INTERNAL not in codes, codes
    # The mutations reach every layer: decoding, the envelope, the bodies, the jobs, the tuners.
    assert {ErrorCode.MALFORMED, ErrorCode.BAD_REQUEST, ErrorCode.JOB_CONFLICT, ErrorCode.BAD_CONFIG} <= codes, codes
    assert statuses["ok"] > 100 and statuses["error"] > 5000, statuses
    assert "Traceback" not in server.log()


@pytest.mark.parametrize("job_id", ["x\n", "x\n\n", "\nx", "x\r", "x y", "x/..", "é"])
def test_job_ids_are_matched_whole(job_id):
    assert not protocol.is_valid_job_id(job_id)
    env = protocol.request("hello", {"tuner": "cosine"}, job_id=job_id, client_id="c", seq=0)
    with pytest.raises(protocol.ProtocolError) as info:
        protocol.validate_request(env)
    assert info.value.code == ErrorCode.BAD_REQUEST
