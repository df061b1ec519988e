"""Message bodies (autolrs.wire.messages): one definition for both sides. Every golden body is
read into its class and written back byte for byte, bad fields are refused by name, unknown
fields are ignored."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from autolrs import actions as A
from autolrs.wire import messages as M
from autolrs.wire import protocol as P

GOLDEN = Path(__file__).parent / "golden"
OK_GOLDEN = [p for p in sorted(GOLDEN.glob("*.json")) if P.loads(p.read_bytes()).get("status") != "error"]


def kind_and_class(msg: dict):
    name = msg["type"]
    if name.endswith("_request"):
        kind = name[: -len("_request")]
        return kind, M.REQUESTS[kind]
    kind = name[: -len("_reply")]
    return kind, M.REPLIES[kind]


def test_every_kind_has_a_request_and_a_reply_body():
    assert set(M.REQUESTS) == set(M.REPLIES) == set(P.REQUEST_KINDS)


@pytest.mark.parametrize("path", OK_GOLDEN, ids=lambda p: p.stem)
def test_golden_bodies_read_and_write_back_byte_for_byte(path):
    msg = P.loads(path.read_bytes())
    _, cls = kind_and_class(msg)
    parsed = cls.from_body(msg["body"])
    assert P.dumps(parsed.to_body()) == P.dumps(msg["body"])


def test_report_round_trip_keeps_nan_and_inf():
    body = P.loads((GOLDEN / "report_request.json").read_bytes())["body"]
    report = M.Report.from_body(P.loads(P.dumps(M.Report.from_body(body).to_body())))
    losses = report.observation.losses
    assert losses[0] == 2.302 and math.isnan(losses[1]) and losses[2] == math.inf and report.lr == 0.0999


def test_hello_defaults_and_optional_probe_flag():
    hello = M.Hello.from_body({"tuner": "cosine"})
    assert hello == M.Hello("cosine") and hello.config == {} and hello.param_groups == 1
    assert "has_probe_fn" not in hello.to_body()
    assert M.Hello.from_body(M.Hello("loss_diff", has_probe_fn=True).to_body()).has_probe_fn is True


def test_unknown_fields_are_ignored_on_both_sides():
    assert M.Goodbye.from_body({"step": 3, "reason": "done", "later": [1]}) == M.Goodbye(3, "done")
    plan = [A.stop("x")]
    assert M.ReportReply.from_body({"plan": plan, "hint": "x"}) == M.ReportReply(plan)


def test_hello_reply_deprecations_travel_only_when_there_are_some():
    plan = [A.run(5, 0)]
    assert "deprecations" not in M.HelloReply(plan, seed=1).to_body()
    body = M.HelloReply(plan, seed=1, deprecations=("use lr_min",)).to_body()
    assert M.HelloReply.from_body(P.loads(P.dumps(body))).deprecations == ("use lr_min",)


def test_goodbye_reply_without_a_summary():
    assert M.GoodbyeReply.from_body({}).summary is None
    assert M.GoodbyeReply.from_body(M.GoodbyeReply().to_body()) == M.GoodbyeReply()


@pytest.mark.parametrize("cls, body, field", [
    (M.Hello, {}, "tuner"),
    (M.Hello, {"tuner": "x", "config": []}, "config"),
    (M.Hello, {"tuner": "x", "initial_lr": "0.1"}, "initial_lr"),
    (M.Hello, {"tuner": "x", "param_groups": 0}, "param_groups"),
    (M.Hello, {"tuner": "x", "step": -1}, "step"),
    (M.Hello, {"tuner": "x", "has_val_fn": 1}, "has_val_fn"),
    (M.Hello, {"tuner": "x", "seed": 2**63}, "seed"),
    (M.HelloReply, {"plan": []}, "plan"),
    (M.HelloReply, {"plan": [A.stop("x")], "deprecations": "x"}, "deprecations"),
    (M.Report, {"step": "3"}, "step"),
    (M.Report, {"step": 3, "lr": "x"}, "lr"),
    (M.ReportReply, {"plan": [{"op": "run", "steps": 0, "start_step": 0}]}, "plan"),
    (M.Goodbye, {"step": "x"}, "step"),
    (M.Goodbye, {"reason": 3}, "reason"),
    (M.GoodbyeReply, {"summary": [1]}, "summary"),
    (M.StatusReply, {"server": {}, "sessions": [1]}, "sessions"),
    (M.PingReply, {"protocol": "1", "version": "0.1"}, "protocol"),
])
def test_bad_fields_are_refused_by_name(cls, body, field):
    with pytest.raises(M.BodyError, match=field):
        cls.from_body(body)


def test_the_credential_and_the_plan_sent_ahead_travel_only_when_there_are_some():
    plan = [A.run(3, 0, lrs=[0.1, 0.1, 0.1])]
    ahead = [A.run(3, 3, lrs=[0.05, 0.05, 0.05])]
    assert M.HelloReply(plan).to_body() == {"plan": plan, "resumed": False, "seed": None}
    body = M.HelloReply(plan, credential="c" * 43, next=ahead).to_body()
    assert body["credential"] == "c" * 43 and body["next"] == ahead
    assert M.HelloReply.from_body(body) == M.HelloReply(plan, credential="c" * 43, next=ahead)
    assert M.ReportReply(plan).to_body() == {"plan": plan}
    assert M.ReportReply.from_body({"plan": plan, "next": ahead}).next == ahead
    for bad in ([A.stop("x")], [{"op": "fly"}], "x"):
        with pytest.raises(M.BodyError, match="next"):
            M.ReportReply.from_body({"plan": plan, "next": bad})
    assert M.Goodbye(5, "done").to_body() == {"step": 5, "reason": "done"}
    assert M.Goodbye.from_body({"step": 5, "lr": 0.01}).lr == 0.01
