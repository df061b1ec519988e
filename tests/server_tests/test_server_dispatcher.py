"""Dispatcher semantics without sockets: every request kind, every error code, dedupe, rollback."""

from __future__ import annotations

import json
import math
import zlib

import pytest
from server_testlib import DispatcherHarness, hello_body, report_body

import autolrs
from autolrs import actions
from autolrs.server.dispatcher import Dispatcher
from autolrs.wire import messages, protocol
from autolrs.wire.protocol import ErrorCode

ERROR_CODES = {v for k, v in vars(ErrorCode).items() if k.isupper()}


def ok(reply: dict) -> dict:
    assert reply["status"] == "ok", reply
    return reply["body"]


def err(reply: dict, code: str) -> str:
    assert reply["status"] == "error", reply
    assert reply["error"]["code"] == code, reply
    return reply["error"]["message"]


def start_job(h, job_id="job-1", client_id="client-a", seq=0, **hello):
    hello.setdefault("config", {"T_0": 10})
    return ok(h.call("hello", hello_body(**hello), job_id=job_id, client_id=client_id, seq=seq))


# --- stateless requests ------------------------------------------------------------------


def test_ping(harness):
    reply = harness.call("ping")
    assert reply["type"] == "ping_reply"
    assert ok(reply) == {"protocol": protocol.PROTOCOL_VERSION, "version": autolrs.__version__}


def test_status_lists_sessions(harness):
    body = ok(harness.call("status"))
    assert body["server"]["sessions"] == 0 and body["sessions"] == []
    assert body["server"]["version"] == autolrs.__version__ and body["server"]["protocol"] == 1
    start_job(harness)
    ok(harness.call("report", report_body(10, 10), seq=1))
    body = ok(harness.call("status"))
    assert body["server"]["sessions"] == 1 and body["server"]["uptime_s"] >= 0
    (s,) = body["sessions"]
    assert set(s) == {"job_id", "tuner", "status", "step", "lr", "created", "updated", "requests", "summary"}
    assert (s["job_id"], s["tuner"], s["status"], s["step"], s["requests"]) == ("job-1", "cosine", "active", 10, 2)
    assert s["lr"] == s["summary"]["lr"] == pytest.approx(0.1)  # T_0=10: a restart at step 10


# --- hello -------------------------------------------------------------------------------


def test_hello_new_job_plan_and_seed(harness):
    reply = harness.call("hello", hello_body(config={"T_0": 100}, max_steps=30), job_id="run-7")
    assert reply["type"] == "hello_reply" and reply["job_id"] == "run-7" and reply["seq"] == 0
    body = ok(reply)
    assert body["resumed"] is False
    assert body["seed"] == zlib.crc32(b"run-7")
    *before, run = actions.validate_plan(body["plan"])
    assert before == [actions.discard("guard"), actions.checkpoint("guard")]  # the divergence guard's first snapshot
    assert run["op"] == "run" and run["steps"] == 10 and run["start_step"] == 0  # the guard's segment (its minimum)
    assert run["lrs"][0] == 0.1  # initial_lr from the hello is the base LR

    body = ok(harness.call("hello", hello_body(seed=42), job_id="run-8"))
    assert body["seed"] == 42
    assert harness.store.get("run-8").tuner.seed == 42


def test_config_precedence_server_defaults_hello_job_keys(tmp_path):
    # (the guard off by a server default too: its segments would cut the plans checked here)
    h = DispatcherHarness(tmp_path / "s", tuners={"cosine": {"T_0": 7, "chunk": 50, "guard": False},
                                                  "step": {"gamma": 0.5}})
    try:
        # server default T_0=7 applies: the LR restarts at step 7
        lrs = ok(h.call("hello", hello_body(), job_id="a"))["plan"][-1]["lrs"]
        assert len(lrs) == 50 and lrs[7] == lrs[0] == 0.1 and lrs[6] < 0.1
        # the hello's config beats the server default; the hello's max_steps beats the config's
        body = hello_body(config={"T_0": 20, "max_steps": 500}, max_steps=30)
        run = ok(h.call("hello", body, job_id="b"))["plan"][-1]
        assert run["steps"] == 30 and run["lrs"][7] < 0.1 and run["lrs"][20] == 0.1
        assert h.store.get("b").config["T_0"] == 20 and h.store.get("b").config["max_steps"] == 30
        # a null job key does not erase a value from the config
        run = ok(h.call("hello", hello_body(config={"max_steps": 12}, max_steps=None), job_id="c"))["plan"][-1]
        assert run["steps"] == 12
        # defaults of one tuner do not leak into another
        ok(h.call("hello", hello_body("step"), job_id="d"))
        cfg = h.store.get("d").config
        assert cfg["gamma"] == 0.5 and "T_0" not in cfg
    finally:
        h.store.close()


def test_hello_unknown_tuner(harness):
    msg = err(harness.call("hello", hello_body("no-such-tuner")), ErrorCode.UNKNOWN_TUNER)
    assert "no-such-tuner" in msg and "cosine" in msg
    assert harness.store.get("job-1") is None


@pytest.mark.parametrize("config, fragment", [
    ({"T_zero": 3}, "T_zero"),
    ({"T_0": 0}, "T_0"),
    ({"eta_min": 1.0}, "eta_min"),
    ({"T_0": "soon"}, "T_0"),
])
def test_hello_bad_config(harness, config, fragment):
    assert fragment in err(harness.call("hello", hello_body(config=config)), ErrorCode.BAD_CONFIG)
    assert harness.store.get("job-1") is None
    assert not (harness.state_dir / "jobs" / "job-1" / "state.json").exists()


def test_hello_without_any_lr_is_bad_config(harness):
    err(harness.call("hello", hello_body("constant", initial_lr=None)), ErrorCode.BAD_CONFIG)


@pytest.mark.parametrize("patch", [{"initial_lr": math.nan}, {"initial_lr": -0.1}, {"max_steps": 0}])
def test_hello_bad_job_keys_are_bad_config(harness, patch):
    err(harness.call("hello", {**hello_body(), **patch}), ErrorCode.BAD_CONFIG)


@pytest.mark.parametrize("patch", [
    {"tuner": None}, {"tuner": 3}, {"config": [1]}, {"initial_lr": "0.1"}, {"param_groups": 0},
    {"step": -1}, {"step": 1.5}, {"max_steps": "10"}, {"has_val_fn": 1}, {"seed": -1}, {"seed": "x"},
])
def test_hello_bad_body(harness, patch):
    err(harness.call("hello", {**hello_body(), **patch}), ErrorCode.BAD_REQUEST)
    assert harness.store.get("job-1") is None


def test_hello_resume_by_new_client(harness):
    start_job(harness)
    ok(harness.call("report", report_body(10, 10), seq=1))
    current = harness.store.get("job-1").tuner.ask()
    # A new process (a trainer restarted from its checkpoint, with the job's credential) at step 10.
    body = ok(harness.call("hello", hello_body(config={"T_0": 10}, initial_lr=0.05, step=10), client_id="client-b",
                           seq=0))
    assert body["resumed"] is True and body["plan"][-1] == current[-1] and body["seed"] == zlib.crc32(b"job-1")
    # the new process holds none of the old one's slots: the guard saves its snapshot afresh
    assert body["plan"][:-1] == [actions.discard("guard"), actions.checkpoint("guard")]
    assert harness.store.get("job-1").owner == "client-b"
    # the old client has lost the job; the new one continues it
    err(harness.call("report", report_body(20, 10), client_id="client-a", seq=2), ErrorCode.JOB_CONFLICT)
    plan = ok(harness.call("report", report_body(20, 10), client_id="client-b", seq=1))["plan"]
    assert plan[-1]["start_step"] == 20


@pytest.mark.parametrize("tuner, config", [("cosine", {"T_0": 11}), ("step", {"T_0": 10}), ("cosine", {})])
def test_hello_conflict_with_active_job(harness, tuner, config):
    start_job(harness)
    msg = err(harness.call("hello", hello_body(tuner, config=config), client_id="client-b"), ErrorCode.JOB_CONFLICT)
    assert "another job id" in msg and "goodbye" in msg
    assert harness.store.get("job-1").owner == "client-a"


def test_finished_job_is_replaced_by_new_hello(harness):
    start_job(harness)
    ok(harness.call("report", report_body(10, 10), seq=1))
    ok(harness.call("goodbye", {"step": 10, "reason": "done"}, seq=2))
    body = ok(harness.call("hello", hello_body("step", config={"step_size": 5}), client_id="client-b", seq=0))
    assert body["resumed"] is False and body["plan"][-1]["start_step"] == 0
    s = harness.store.get("job-1")
    assert (s.tuner_name, s.status, s.owner, s.requests, s.step) == ("step", "active", "client-b", 1, 0)
    kinds = [(r["kind"], r.get("replaced_finished")) for r in harness.decisions()]
    assert kinds == [("hello", False), ("report", None), ("goodbye", None), ("hello", True)]


# --- report ------------------------------------------------------------------------------


def test_report_advances_schedule(harness):
    first = start_job(harness, config={"T_0": 100, "chunk": 10})["plan"][-1]
    assert first["start_step"] == 0 and len(first["lrs"]) == 10
    body = ok(harness.call("report", {**report_body(10, 10), "lr": 0.1, "extra": [1, 2]}, seq=1))
    run = body["plan"][-1]
    assert run["start_step"] == 10 and run["lrs"][0] == pytest.approx(0.05 * (1 + math.cos(math.pi * 10 / 100)))
    assert harness.store.get("job-1").step == 10


def test_report_with_non_finite_losses_is_accepted(harness):
    start_job(harness)
    losses = [2.0, math.nan, math.inf, -math.inf, 1.0]
    ok(harness.call("report", report_body(5, 5, losses=losses, evals=[[0, math.nan], [4, 1.5]]), seq=1))
    rec = harness.decisions()[-1]
    obs = rec["observation"]
    assert obs["n_losses"] == 5 and obs["mean_loss"] == 1.5 and obs["last_loss"] == 1.0
    assert math.isnan(obs["evals"][0][1])
    line = (harness.state_dir / "jobs" / "job-1" / "decisions.jsonl").read_bytes().splitlines()[-1]
    assert b'{"$float":"nan"}' in line and b"NaN" not in line  # valid JSON on disk
    json.loads(line)


def test_report_all_losses_nan(harness):
    start_job(harness)
    ok(harness.call("report", report_body(3, 3, losses=[math.nan] * 3), seq=1))
    obs = harness.decisions()[-1]["observation"]
    assert obs["mean_loss"] is None and math.isnan(obs["last_loss"])


def test_report_unknown_job(harness):
    err(harness.call("report", report_body(1, 1), job_id="nope"), ErrorCode.UNKNOWN_JOB)
    err(harness.call("goodbye", {"step": 1}, job_id="nope"), ErrorCode.UNKNOWN_JOB)


@pytest.mark.parametrize("body", [
    {}, {"step": -1}, {"step": "3"}, {"step": 3, "losses": "x"}, {"step": 3, "losses": [1, "a"]},
    {"step": 3, "evals": [[0]]}, {"step": 3, "steps": -2},
])
def test_report_bad_body_changes_nothing(harness, body):
    start_job(harness)
    before = harness.store.get("job-1").to_state()
    err(harness.call("report", body, seq=1), ErrorCode.BAD_REQUEST)
    assert harness.store.get("job-1").to_state() == before
    assert len(harness.decisions()) == 1


def test_duplicate_report_is_applied_once(harness):
    start_job(harness, config={"T_0": 100, "chunk": 10})
    cred = harness.credentials["job-1"]
    frame = harness.frame("report", report_body(10, 10), job_id="job-1", client_id="client-a", seq=1, credential=cred)
    first = harness.dispatcher.handle(frame)
    state = harness.store.get("job-1").to_state()
    again = harness.dispatcher.handle(frame)
    assert again == first
    # a resend with a different body under the same seq is still the cached reply, not applied
    other = harness.frame("report", report_body(30, 30), job_id="job-1", client_id="client-a", seq=1, credential=cred)
    assert harness.dispatcher.handle(other) == first
    assert harness.store.get("job-1").to_state() == state
    assert harness.store.get("job-1").tuner.step == 10 and harness.store.get("job-1").requests == 2
    assert [r["kind"] for r in harness.decisions()] == ["hello", "report"]
    # the next seq is applied normally
    assert ok(harness.call("report", report_body(20, 10), seq=2))["plan"][-1]["start_step"] == 20


def test_duplicate_hello_and_goodbye_get_cached_reply(harness):
    h1 = harness.frame("hello", hello_body(), job_id="job-1", client_id="client-a", seq=0)
    first = harness.dispatcher.handle(h1)
    assert harness.dispatcher.handle(h1) == first  # the resend gets the same credential too
    cred = protocol.loads(first)["body"]["credential"]
    g = harness.frame("goodbye", {"step": 0, "reason": "x"}, job_id="job-1", client_id="client-a", seq=1,
                      credential=cred)
    assert protocol.loads(harness.dispatcher.handle(g))["status"] == "ok"
    assert protocol.loads(harness.dispatcher.handle(g))["status"] == "ok"
    assert [r["kind"] for r in harness.decisions()] == ["hello", "goodbye"]


def test_seq_reused_for_another_kind_is_refused(harness):
    start_job(harness)
    err(harness.call("report", report_body(1, 1), seq=0), ErrorCode.STALE_SEQ)


def test_stale_seq(harness):
    start_job(harness)
    ok(harness.call("report", report_body(10, 10), seq=5))
    err(harness.call("report", report_body(20, 10), seq=4), ErrorCode.STALE_SEQ)
    err(harness.call("goodbye", {}, seq=3), ErrorCode.STALE_SEQ)
    err(harness.call("hello", hello_body(config={"T_0": 10}), seq=2), ErrorCode.STALE_SEQ)
    assert harness.store.get("job-1").step == 10


def test_hello_from_new_client_accepted_whatever_seq(harness):
    start_job(harness, seq=50)
    body = ok(harness.call("hello", hello_body(config={"T_0": 10}), client_id="client-b", seq=0))
    assert body["resumed"] is True


# --- goodbye -----------------------------------------------------------------------------


def test_goodbye_finishes_job_and_its_reply_carries_the_summary(harness):
    start_job(harness, config={"T_0": 10, "guard": False})  # the tuner told every report at once
    ok(harness.call("report", report_body(10, 10), seq=1))
    reply = ok(harness.call("goodbye", {"step": 14, "reason": "done"}, seq=2))
    s = harness.store.get("job-1")
    assert s.status == "finished" and s.step == 14
    # The job's own summary, the same the server-wide status lists for it.
    assert reply == {"summary": s.tuner.summary()} and reply["summary"]["step"] == 10
    assert ok(harness.call("status"))["sessions"][0]["summary"] == reply["summary"]
    assert harness.call("goodbye", {"step": 14, "reason": "done"}, seq=2)["body"] == reply  # a resend: cached
    assert messages.GoodbyeReply.from_body(reply).summary == reply["summary"]
    err(harness.call("report", report_body(15, 1), seq=3), ErrorCode.JOB_FINISHED)
    err(harness.call("goodbye", {}, seq=4), ErrorCode.JOB_FINISHED)
    assert ok(harness.call("status"))["sessions"][0]["status"] == "finished"


def test_goodbye_bad_body_and_wrong_owner(harness):
    start_job(harness)
    err(harness.call("goodbye", {"step": "x"}, seq=1), ErrorCode.BAD_REQUEST)
    err(harness.call("goodbye", {"reason": 3}, seq=1), ErrorCode.BAD_REQUEST)
    err(harness.call("goodbye", {}, client_id="client-z", seq=9), ErrorCode.JOB_CONFLICT)
    assert harness.store.get("job-1").status == "active"


# --- envelope errors ---------------------------------------------------------------------


@pytest.mark.parametrize("frame, code", [
    (b"\xff\xfe", ErrorCode.MALFORMED),
    (b"", ErrorCode.MALFORMED),
    (b"{", ErrorCode.MALFORMED),
    (b"[1, 2]", ErrorCode.MALFORMED),
    (b'{"v": 1, "type": "ping_request", "x": NaN}', ErrorCode.MALFORMED),
    (b'{"v": 1, "type": "ping_request", "x": {"$float": "huge"}}', ErrorCode.MALFORMED),
    (b"[" * 100000, ErrorCode.MALFORMED),
    (b'{"v": 2, "type": "ping_request"}', ErrorCode.VERSION),
    (b'{"type": "ping_request"}', ErrorCode.VERSION),
    (b'{"v": 1, "type": "dance_request"}', ErrorCode.UNKNOWN_TYPE),
    (b'{"v": 1, "type": "ping_reply"}', ErrorCode.BAD_REQUEST),
    (b'{"v": 1, "type": "ping_request", "body": []}', ErrorCode.BAD_REQUEST),
    (b'{"v": 1, "type": "report_request", "job_id": "../x", "client_id": "c", "seq": 1}', ErrorCode.BAD_REQUEST),
    (b'{"v": 1, "type": "report_request", "job_id": "j", "client_id": "c", "seq": -1}', ErrorCode.BAD_REQUEST),
    (b'{"v": 1, "type": "report_request", "job_id": "j", "client_id": "c", "seq": true}', ErrorCode.BAD_REQUEST),
    (b'{"v": 1, "type": "report_request", "job_id": "j", "client_id": "", "seq": 1}', ErrorCode.BAD_REQUEST),
    (b'{"v": 1, "type": "hello_request", "job_id": "j", "seq": 1}', ErrorCode.BAD_REQUEST),
])
def test_envelope_errors(harness, frame, code):
    reply = harness.raw(frame)
    err(reply, code)
    assert reply["v"] == protocol.PROTOCOL_VERSION


def test_error_reply_mirrors_kind_job_and_seq(harness):
    reply = harness.call("report", report_body(1, 1), job_id="nope", seq=3)
    assert (reply["type"], reply["job_id"], reply["seq"]) == ("report_reply", "nope", 3)
    assert harness.raw(b"junk")["type"] == "error_reply"


def test_too_large(tmp_path):
    h = DispatcherHarness(tmp_path / "s")
    try:
        limit = h.config.max_message_bytes
        big = protocol.dumps(protocol.request("ping", {"pad": "x" * limit}))
        err(h.raw(big), ErrorCode.TOO_LARGE)
        assert h.raw(protocol.dumps(protocol.request("ping")))["status"] == "ok"
    finally:
        h.store.close()


# --- failures inside the server ------------------------------------------------------------


def test_tuner_exception_is_internal_and_rolled_back(harness, monkeypatch, caplog):
    start_job(harness, config={"T_0": 100, "chunk": 10})
    ok(harness.call("report", report_body(10, 10), seq=1))
    tuner = harness.store.get("job-1").tuner
    state = harness.store.get("job-1").to_state()
    on_disk = (harness.state_dir / "jobs" / "job-1" / "state.json").read_bytes()

    def broken_tell(obs):
        tuner.step = 999  # half-applied change that must not survive
        raise RuntimeError("boom")

    monkeypatch.setattr(tuner, "tell", broken_tell)
    reply = harness.call("report", report_body(20, 10), seq=2)
    err(reply, ErrorCode.INTERNAL)
    assert "boom" in caplog.text and "Traceback" in caplog.text
    s = harness.store.get("job-1")
    assert s.to_state() == state and s.tuner.step == 10
    assert (harness.state_dir / "jobs" / "job-1" / "state.json").read_bytes() == on_disk
    assert len(harness.decisions()) == 2
    # the rolled-back session (a fresh tuner) takes the same request again
    assert ok(harness.call("report", report_body(20, 10), seq=2))["plan"][-1]["start_step"] == 20


def test_invalid_plan_is_internal_and_rolled_back(harness, monkeypatch):
    start_job(harness)
    cls = type(harness.store.get("job-1").tuner)
    monkeypatch.setattr(cls, "ask", lambda self: [{"op": "set_lr", "lr": -1.0}])
    err(harness.call("report", report_body(10, 10), seq=1), ErrorCode.INTERNAL)
    monkeypatch.undo()
    s = harness.store.get("job-1")
    assert s.tuner.step == 0 and s.requests == 1 and s.last_seq == 0


def test_save_failure_is_internal_and_rolled_back(harness, monkeypatch):
    start_job(harness)

    def failing_save(session):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(harness.store, "save", failing_save)
    err(harness.call("report", report_body(10, 10), seq=1), ErrorCode.INTERNAL)
    err(harness.call("hello", hello_body(), job_id="job-2"), ErrorCode.INTERNAL)
    monkeypatch.undo()
    assert harness.store.get("job-1").step == 0 and harness.store.get("job-2") is None
    assert ok(harness.call("report", report_body(10, 10), seq=1))["plan"][-1]["start_step"] == 10


def test_unencodable_summary_does_not_break_status(harness, monkeypatch):
    start_job(harness)
    cls = type(harness.store.get("job-1").tuner)
    # status lists the summary cached after each change, so the report refreshes it
    monkeypatch.setattr(cls, "summary", lambda self: {"lr": object()})
    assert harness.call("report", report_body(10, 10), seq=1)["status"] == "ok"
    reply = harness.call("status")
    err(reply, ErrorCode.INTERNAL)
    monkeypatch.setattr(cls, "summary", lambda self: 1 / 0)
    assert harness.call("report", report_body(20, 10), seq=2)["status"] == "ok"
    assert ok(harness.call("status"))["sessions"][0]["summary"] == {}


# --- persistence -------------------------------------------------------------------------


def test_restart_resumes_and_recognises_last_request(harness):
    start_job(harness, config={"T_0": 100, "chunk": 10})
    frame = harness.frame("report", report_body(10, 10), job_id="job-1", client_id="client-a", seq=1,
                          credential=harness.credentials["job-1"])
    first = harness.dispatcher.handle(frame)
    h2 = harness.restart()
    try:
        assert h2.dispatcher.handle(frame) == first  # the duplicate survives the restart
        s = h2.store.get("job-1")
        assert s.tuner.step == 10 and s.requests == 2 and s.owner == "client-a"
        assert ok(h2.call("report", report_body(20, 10), seq=2))["plan"][-1]["start_step"] == 20
        assert [r["kind"] for r in h2.decisions()] == ["hello", "report", "report"]
    finally:
        h2.store.close()


def test_every_reply_is_json_with_a_known_code(harness):
    for frame in (b"x", b"{}", b'{"v":1}', b'{"v":1,"type":5}'):
        reply = json.loads(harness.dispatcher.handle(frame))
        assert reply["status"] == "error" and reply["error"]["code"] in ERROR_CODES


# --- ownership ---------------------------------------------------------------------------


def test_a_job_belongs_to_the_holder_of_its_credential(harness):
    start_job(harness, config={"T_0": 10, "chunk": 5})
    own = harness.credentials["job-1"]
    assert len(own) >= 40
    for credential in (None, "x" * 43, own[:-1] + ("A" if own[-1] != "A" else "B")):
        for kind, body in (("hello", hello_body(config={"T_0": 10, "chunk": 5})), ("report", report_body(5, 5)),
                           ("goodbye", {"step": 5})):
            msg = err(harness.call(kind, body, client_id="intruder", seq=0, credential=credential),
                      ErrorCode.JOB_CONFLICT)
            assert "belongs to another trainer" in msg and "T_0" not in msg and "chunk" not in msg
    s = harness.store.get("job-1")
    assert (s.owner, s.requests, s.status) == ("client-a", 1, "active")
    # the credential is kept only as a digest, and never in the cached reply
    state = (harness.state_dir / "jobs" / "job-1" / "state.json").read_text()
    assert own not in state and s.credential in state and "credential" not in json.dumps(s.last_reply)


def test_a_lost_first_reply_is_resent_with_the_credential_even_after_a_restart(harness):
    frame = harness.frame("hello", hello_body(), job_id="job-1", client_id="client-a", seq=0)
    first = protocol.loads(harness.dispatcher.handle(frame))["body"]["credential"]
    assert protocol.loads(harness.dispatcher.handle(frame))["body"]["credential"] == first
    h2 = harness.restart()
    try:
        again = protocol.loads(h2.dispatcher.handle(frame))["body"]["credential"]
        assert again != first  # only its digest survived the restart: a new one, the old one void
        err(h2.call("report", report_body(5, 5), seq=1, credential=first), ErrorCode.JOB_CONFLICT)
        ok(h2.call("report", report_body(5, 5), seq=1, credential=again))
        # once the client has shown it has the credential, a resend of that hello is refused
        err(protocol.loads(h2.dispatcher.handle(frame)), ErrorCode.JOB_CONFLICT)
    finally:
        h2.store.close()


def test_a_job_saved_before_credentials_gets_one_at_its_next_hello(harness):
    start_job(harness)
    path = harness.state_dir / "jobs" / "job-1" / "state.json"
    state = json.loads(path.read_text())
    del state["credential"], state["creator"], state["lr"]  # as an older server wrote it
    path.write_text(json.dumps(state))
    h2 = harness.restart()
    try:
        h2.credentials.clear()
        ok(h2.call("report", report_body(10, 10), seq=1))  # its client id still drives it
        body = ok(h2.call("hello", hello_body(config={"T_0": 10}), client_id="client-b", seq=0))
        assert body["resumed"] is True and body["credential"]
        err(h2.call("report", report_body(20, 10), client_id="client-b", seq=1, credential=None), ErrorCode.JOB_CONFLICT)
        ok(h2.call("report", report_body(20, 10), client_id="client-b", seq=1, credential=body["credential"]))
    finally:
        h2.store.close()


def test_status_rows_and_the_lr_the_trainer_is_at(harness):
    start_job(harness, config={"T_0": 10, "chunk": 5})
    assert ok(harness.call("status", admin=False))["sessions"] == [{"job_id": "job-1", "status": "active"}]
    assert ok(harness.call("status"))["sessions"][0]["lr"] == 0.1  # the plan's first LR
    ok(harness.call("report", {**report_body(5, 5), "lr": 0.07}, seq=1))
    row = ok(harness.call("status"))["sessions"][0]
    assert row["lr"] == pytest.approx(0.05 * (1 + math.cos(math.pi * 5 / 10)))  # the next plan's first LR
    ok(harness.call("goodbye", {"step": 7, "lr": 0.0123}, seq=2))
    assert ok(harness.call("status"))["sessions"][0]["lr"] == 0.0123  # where the trainer ended


def test_sessions_per_peer(tmp_path):
    h = DispatcherHarness(tmp_path / "s")
    try:
        h.config = dataclasses_replace(h.config, max_sessions_per_peer=2)
        h.dispatcher = Dispatcher(h.config, h.store)
        for i in range(2):
            ok(h.call("hello", hello_body(), job_id=f"a-{i}", peer="10.0.0.1"))
        msg = err(h.call("hello", hello_body(), job_id="a-2", peer="10.0.0.1"), ErrorCode.TOO_MANY_SESSIONS)
        assert "max_sessions_per_peer 2" in msg
        ok(h.call("hello", hello_body(), job_id="b-0", peer="10.0.0.2"))
        ok(h.call("goodbye", {}, job_id="a-0", seq=1))
        ok(h.call("hello", hello_body(), job_id="a-2", peer="10.0.0.1"))
    finally:
        h.store.close()


def test_a_reply_too_large_is_internal_and_rolled_back(harness, monkeypatch):
    start_job(harness)
    cls = type(harness.store.get("job-1").tuner)
    monkeypatch.setattr(cls, "summary", lambda self: {"pad": "x" * (5 << 20)})
    err(harness.call("goodbye", {"step": 1}, seq=1), ErrorCode.INTERNAL)
    assert harness.store.get("job-1").status == "active"


def dataclasses_replace(config, **changes):
    import dataclasses

    return dataclasses.replace(config, **changes)
