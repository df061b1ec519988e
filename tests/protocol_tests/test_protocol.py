"""Protocol v1: golden messages are frozen; encoding round-trips; bad frames raise ProtocolError."""

import json
import math
from pathlib import Path

import pytest

from autolrs import actions as A
from autolrs.wire import protocol as P

GOLDEN = Path(__file__).parent / "golden"
GOLDEN_FILES = sorted(GOLDEN.glob("*.json"))


def test_protocol_version_is_one():
    # Changing this constant means a new wire version: regenerate the golden files on purpose.
    assert P.PROTOCOL_VERSION == 1


@pytest.mark.parametrize("path", GOLDEN_FILES, ids=lambda p: p.stem)
def test_golden_message_round_trips_byte_for_byte(path):
    frame = path.read_bytes().rstrip(b"\n")
    msg = P.loads(frame)
    assert msg["v"] == P.PROTOCOL_VERSION
    assert P.dumps(msg) == frame


@pytest.mark.parametrize("path", [p for p in GOLDEN_FILES if p.stem.endswith("_request")], ids=lambda p: p.stem)
def test_golden_requests_validate(path):
    msg = P.loads(path.read_bytes())
    kind, body = P.validate_request(msg)
    assert msg["type"] == f"{kind}_request"
    assert isinstance(body, dict)


@pytest.mark.parametrize("path", [p for p in GOLDEN_FILES if p.stem.endswith("_reply")], ids=lambda p: p.stem)
def test_golden_replies_have_status(path):
    msg = P.loads(path.read_bytes())
    assert msg["status"] in ("ok", "error")
    if msg["status"] == "error":
        assert set(msg["error"]) == {"code", "message"}
    for action_list in [msg.get("body", {}).get("plan")]:
        if action_list is not None:
            A.validate_plan(action_list)


def test_golden_report_carries_non_finite_losses():
    body = P.loads((GOLDEN / "report_request.json").read_bytes())["body"]
    obs = A.Observation.from_body(body)
    assert obs.losses[0] == 2.302 and math.isnan(obs.losses[1]) and obs.losses[2] == math.inf


def test_builders_reproduce_golden_hello():
    frame = (GOLDEN / "hello_request.json").read_bytes().rstrip(b"\n")
    original = P.loads(frame)
    rebuilt = P.request("hello", original["body"], job_id=original["job_id"],
                        client_id=original["client_id"], seq=original["seq"])
    assert P.dumps(rebuilt) == frame


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 0.0, -1.5e-300, 1e308])
def test_floats_round_trip_including_non_finite(value):
    out = P.loads(P.dumps({"x": [value, {"y": value}]}))
    for got in (out["x"][0], out["x"][1]["y"]):
        assert (math.isnan(got) and math.isnan(value)) or got == value


def test_encoded_frames_are_standard_json():
    frame = P.dumps({"a": math.nan, "b": [math.inf]})
    assert json.loads(frame) == {"a": {"$float": "nan"}, "b": [{"$float": "inf"}]}


@pytest.mark.parametrize("frame", [b"\xff\xfe", b"{", b"NaN", b'{"a": NaN}', b'{"a": Infinity}',
                                   b'{"$float": "banana"}', b"[" * 100000])
def test_bad_frames_raise_malformed(frame):
    with pytest.raises(P.ProtocolError) as err:
        P.loads(frame)
    assert err.value.code == P.ErrorCode.MALFORMED


@pytest.mark.parametrize("msg, code", [
    ([], P.ErrorCode.MALFORMED),
    ({"v": 2, "type": "ping_request"}, P.ErrorCode.VERSION),
    ({"v": True, "type": "ping_request"}, P.ErrorCode.VERSION),
    ({"v": 1.0, "type": "ping_request"}, P.ErrorCode.VERSION),
    ({"v": 1}, P.ErrorCode.BAD_REQUEST),
    ({"v": 1, "type": "dance_request"}, P.ErrorCode.UNKNOWN_TYPE),
    ({"v": 1, "type": "ping_request", "body": []}, P.ErrorCode.BAD_REQUEST),
    ({"v": 1, "type": "report_request", "body": {}, "client_id": "c", "seq": 1}, P.ErrorCode.BAD_REQUEST),
    ({"v": 1, "type": "report_request", "job_id": "../etc", "client_id": "c", "seq": 1}, P.ErrorCode.BAD_REQUEST),
    ({"v": 1, "type": "report_request", "job_id": "j", "client_id": "c", "seq": -1}, P.ErrorCode.BAD_REQUEST),
    ({"v": 1, "type": "report_request", "job_id": "j", "client_id": "c", "seq": True}, P.ErrorCode.BAD_REQUEST),
    ({"v": 1, "type": "report_request", "job_id": "j", "seq": 3}, P.ErrorCode.BAD_REQUEST),
])
def test_invalid_envelopes_are_refused_with_a_code(msg, code):
    with pytest.raises(P.ProtocolError) as err:
        P.validate_request(msg)
    assert err.value.code == code


def test_unknown_fields_are_tolerated():
    msg = P.request("ping")
    msg["future_field"] = {"anything": 1}
    assert P.validate_request(msg) == ("ping", {})


def test_error_reply_echoes_job_and_seq():
    req = P.request("report", {}, job_id="j1", client_id="c", seq=9)
    reply = P.error_reply(req, P.ErrorCode.UNKNOWN_JOB, "no such job")
    assert reply["type"] == "report_reply" and reply["seq"] == 9 and reply["job_id"] == "j1"
    assert reply["status"] == "error" and reply["error"]["code"] == "unknown_job"


@pytest.mark.parametrize("plan", [
    [], [A.set_lr(0.1)], [A.run(1, 0), A.run(1, 0)], [{"op": "jump"}],
    [A.set_lr(-1.0), A.run(1, 0)], [A.set_lr(math.nan), A.run(1, 0)],
    [{"op": "run", "steps": 2, "start_step": 0, "lrs": [0.1]}], [A.checkpoint(""), A.stop("x")],
    [{"op": "run", "steps": 0, "start_step": 0}],
])
def test_invalid_plans_are_rejected(plan):
    with pytest.raises(ValueError):
        A.validate_plan(plan)


def test_observation_rejects_wrong_types_but_keeps_nan():
    with pytest.raises(ValueError):
        A.Observation.from_body({"step": "3"})
    with pytest.raises(ValueError):
        A.Observation.from_body({"step": 3, "losses": ["a"]})
    with pytest.raises(ValueError):
        A.Observation.from_body({"step": 3, "evals": [[1]]})
    obs = A.Observation.from_body({"step": 3, "steps": 1, "losses": [math.nan]})
    assert math.isnan(obs.losses[0])
    assert A.Observation.from_body(obs.to_body()) == A.Observation(step=3, steps=1, losses=obs.losses)


def test_error_reply_does_not_echo_junk_identifiers():
    reply = P.error_reply({"type": "report_request", "job_id": ["x"] * 3, "seq": "9" * 300},
                          P.ErrorCode.BAD_REQUEST, "bad")
    assert "job_id" not in reply and "seq" not in reply


@pytest.mark.parametrize("frame", [
    b'{"v": 1, "type": "ping_request", "x": ' + b"1" * 400 + b"}",  # 400 digits
    b'{"v": 1, "type": "ping_request", "x": 9223372036854775808}',  # 2**63
    b'{"v": 1, "type": "ping_request", "x": -9223372036854775808}',
    b'{"v": 1, "type": "ping_request", "x": 1e999}',  # inf in standard JSON
    b'{"v": 1, "type": "ping_request", "x": -1e400}',
    b'{"v": 1, "type": "ping_request", "x": {"$float": ["nan"]}}',  # an unhashable tag
    b'{"v": 1, "type": "ping_request", "x": {"$float": {}}}',
])
def test_numbers_out_of_bounds_are_malformed(frame):
    with pytest.raises(P.ProtocolError) as info:
        P.loads(frame)
    assert info.value.code == P.ErrorCode.MALFORMED


def test_the_largest_integers_and_floats_pass():
    msg = P.loads(b'{"a": 9223372036854775807, "b": -9223372036854775807, "c": 1.7e308, "d": 5e-324}')
    assert msg == {"a": P.MAX_INT, "b": -P.MAX_INT, "c": 1.7e308, "d": 5e-324}


def test_the_credential_travels_in_the_envelope_and_is_checked():
    env = P.request("report", {"step": 1}, job_id="j", client_id="c", seq=1, credential="k" * 43)
    assert P.validate_request(env)[0] == "report" and env["credential"] == "k" * 43
    assert "credential" not in P.request("report", {}, job_id="j", client_id="c", seq=1)
    for bad in ("", 5, "k" * 129, ["k"]):
        with pytest.raises(P.ProtocolError) as info:
            P.validate_request({**env, "credential": bad})
        assert info.value.code == P.ErrorCode.BAD_REQUEST
    # An error reply never carries it back.
    assert "credential" not in json.dumps(P.error_reply(env, P.ErrorCode.JOB_CONFLICT, "no"))


@pytest.mark.parametrize("endpoint, ok", [
    ("tcp://127.0.0.1:5555", True), ("tcp://[::1]:5555", True), ("tcp://gpu-node.example.org:1", True),
    ("tcp://127.0.0.1:65535", True), ("127.0.0.1:5555", False), ("tcp://127.0.0.1", False),
    ("tcp://127.0.0.1:65536", False), ("ipc:///tmp/x", False), ("tcp://127.0.0.1:5555\n", False), (None, False),
])
def test_endpoints_are_tcp_host_port(endpoint, ok):
    if ok:
        assert P.check_endpoint(endpoint) == endpoint
    else:
        with pytest.raises(ValueError, match="expected tcp://HOST:PORT"):
            P.check_endpoint(endpoint)


def test_search_runs_and_starting_lrs():
    plan = [A.checkpoint("stage"), A.set_lr(0.3), A.run(5, 10)]
    marked = A.mark_search(plan)
    assert marked[-1]["search"] is True and "search" not in plan[-1] and A.validate_plan(marked)
    with pytest.raises(ValueError, match="'search'"):
        A.validate_plan([{**plan[-1], "search": "yes"}])
    assert A.starting_lr(plan) == 0.3
    assert A.starting_lr([A.set_lr(0.3), A.run(2, 0, lrs=[0.1, 0.2])]) == 0.1
    assert A.starting_lr([A.restore("s"), A.stop("done")]) is None
    with pytest.raises(ValueError, match="at most 10000"):
        A.validate_plan([A.run(10_001, 0, lrs=[0.1] * 10_001)])


def test_dumps_gives_the_same_bytes_with_and_without_non_finite_values():
    # Messages without NaN or infinity skip the tagging walk; the bytes must not depend on it.
    finite = {"plan": [{"op": "run", "lrs": [0.1, 0.05], "n": 2}], "k": (1, 2), "nested": {"x": -0.0}}
    assert P.dumps(finite) == json.dumps(finite, separators=(",", ":")).encode()
    assert P.loads(P.dumps(finite)) == {**finite, "k": [1, 2]}
    mixed = {"losses": [1.0, math.nan, math.inf], "deep": {"v": -math.inf}, 3: "int key"}
    assert P.dumps(mixed) == (
        b'{"losses":[1.0,{"$float":"nan"},{"$float":"inf"}],"deep":{"v":{"$float":"-inf"}},"3":"int key"}'
    )
    back = P.loads(P.dumps(mixed))
    assert math.isnan(back["losses"][1]) and back["losses"][2] == math.inf and back["deep"]["v"] == -math.inf
