"""A job belongs to the trainer that created it: another client, with or without the server's
secret, cannot take it over, report to it, end it or read its set-up; a second trainer started
on the same job name gets AutoLRSConfigError; one peer cannot fill the server; every knob a
request can ask for is bounded. Real server processes, real sockets, real training on digits."""

from __future__ import annotations

import uuid

import pytest
import torch
from server_testlib import ReqClient, hello_body, report_body

from autolrs.callbacks import AutoLRS, AutoLRSConfigError
from autolrs.callbacks.client import Client, ServerError
from autolrs.testing.training import DigitsBatches, make_mlp, torch_scheduler_lrs, train_step
from autolrs.wire import protocol
from autolrs.wire.protocol import ErrorCode

from multijob_testlib import SECRET

# The schedule alone: the divergence guard would split its chunks into segments of its own.
KNOBS = {"T_0": 40, "T_mult": 2, "eta_min": 0.001, "chunk": 15, "guard": False}
STEPS = 120


def torch_lrs() -> list[float]:
    return torch_scheduler_lrs(lambda opt: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        opt, T_0=40, T_mult=2, eta_min=0.001), 0.1, STEPS)


def attack(endpoint: str, job: str, secret: str | None) -> list[str]:
    """Everything another client can try on a live job without its credential; the error code
    of each attempt (every one must be refused)."""
    outcomes = []
    attempts = [("hello", hello_body(config=KNOBS, max_steps=STEPS), None),  # the same config: was a takeover
                ("hello", hello_body(config={"T_0": 3}), None),
                ("report", report_body(60, 15), None),
                ("report", report_body(60, 15), "a-guess-at-the-credential-" + uuid.uuid4().hex),
                ("goodbye", {"step": 60, "reason": "done"}, None)]
    for kind, body, credential in attempts:
        with Client(endpoint, job, timeout=10.0, secret=secret, credential=credential) as client:
            try:
                reply = client.request(kind, body)
            except ServerError as exc:
                outcomes.append(exc.code)
                # Refusals say nothing of the job's set-up.
                assert "T_mult" not in exc.message and "0.001" not in exc.message, exc.message
            else:
                outcomes.append(f"accepted: {reply}")
    return outcomes


@pytest.mark.parametrize("with_secret", [False, True], ids=["open-server", "shared-secret"])
def test_another_client_cannot_drive_a_live_job(live_server, secret_file, tmp_path, with_secret):
    args = ("--secret-file", str(secret_file)) if with_secret else ()
    server = live_server(tmp_path / "state", *args)
    secret = SECRET if with_secret else None
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    lrs, outcomes = [], []
    with AutoLRS(model, optimizer, tuner="cosine", config=KNOBS, server=server.endpoint, job="owned",
                 max_steps=STEPS, timeout=10.0, secret=secret) as cb:
        batches = DigitsBatches()
        while not cb.should_stop:
            lrs.append(optimizer.param_groups[0]["lr"])
            cb.step(train_step(model, optimizer, batches))
            if cb.global_step in (20, 61):  # mid-segment and just after a report
                outcomes += attack(server.endpoint, "owned", secret)
                if with_secret:  # and a client without the secret gets no further than the signature
                    outcomes += attack(server.endpoint, "owned", None)
        assert cb.online
    expected = [ErrorCode.JOB_CONFLICT] * 5
    if with_secret:
        expected += [ErrorCode.UNAUTHENTICATED] * 5
    assert outcomes == expected * 2
    assert lrs == torch_lrs()  # every step exactly on plan
    records = (server.state_dir / "jobs" / "owned" / "decisions.jsonl").read_bytes().splitlines()
    records = [protocol.loads(line) for line in records]
    assert len({r["client_id"] for r in records}) == 1  # only the trainer ever changed the job
    assert [r["kind"] for r in records].count("report") == STEPS // 15 and records[-1]["kind"] == "goodbye"
    # The credential is in no log, no state file and no status.
    credential = cb.state_dict()["credential"]
    assert credential and len(credential) >= 40
    on_disk = b"".join(p.read_bytes() for p in server.state_dir.rglob("*") if p.is_file())
    assert credential.encode() not in on_disk and credential not in server.log()


def test_status_shows_other_jobs_only_to_the_admin(live_server, tmp_path):
    server = live_server(tmp_path / "state")
    owner = ReqClient(server.endpoint)
    try:
        assert owner.call("hello", hello_body(config={"T_0": 10, "chunk": 5}), job_id="mine", seq=0)["status"] == "ok"
        assert owner.call("report", {**report_body(5, 5), "lr": 0.09}, job_id="mine", seq=1)["status"] == "ok"
        public = owner.call("status")["body"]
        assert public["server"]["admin"] is False
        assert public["sessions"] == [{"job_id": "mine", "status": "active"}]
        wrong = owner.call("status", credential=owner.credentials["mine"])["body"]  # a job's credential is not the admin's
        assert wrong["server"]["admin"] is False and set(wrong["sessions"][0]) == {"job_id", "status"}
        full = owner.call("status", credential=server.admin_token())["body"]
        (row,) = full["sessions"]
        assert full["server"]["admin"] is True and row["tuner"] == "cosine" and row["step"] == 5
        assert row["lr"] == row["summary"]["lr"]  # the LR of the plan the trainer is on now
        assert owner.credentials["mine"] not in repr(full)
    finally:
        owner.close()
    admin_file = server.state_dir / "admin.token"
    assert admin_file.stat().st_mode & 0o077 == 0  # readable by the server's user only


def test_a_second_trainer_on_the_same_job_name_gets_a_config_error(live_server, tmp_path):
    server = live_server(tmp_path / "state")
    first_model, second_model = make_mlp(), make_mlp(seed=1)
    first_opt = torch.optim.SGD(first_model.parameters(), lr=0.1, momentum=0.9)
    second_opt = torch.optim.SGD(second_model.parameters(), lr=0.1)
    lrs = []
    with AutoLRS(first_model, first_opt, tuner="cosine", config=KNOBS, server=server.endpoint, job="shared-name",
                 max_steps=STEPS, timeout=10.0) as first:
        batches = DigitsBatches()
        for _ in range(30):
            lrs.append(first_opt.param_groups[0]["lr"])
            first.step(train_step(first_model, first_opt, batches))
        # The same name and the same config, started by mistake next to it:
        second = AutoLRS(second_model, second_opt, tuner="cosine", config=KNOBS, server=server.endpoint,
                         job="shared-name", max_steps=STEPS, timeout=10.0)
        with pytest.raises(AutoLRSConfigError, match="belongs to another trainer"):
            second.step(train_step(second_model, second_opt, DigitsBatches(seed=1)))
        second.close()
        while not first.should_stop:
            lrs.append(first_opt.param_groups[0]["lr"])
            first.step(train_step(first_model, first_opt, batches))
    assert lrs == torch_lrs()  # the first trainer never noticed
    assert first.summary is not None and first.summary["step"] == STEPS


def test_one_peer_cannot_fill_the_server(live_server, tmp_path):
    config = tmp_path / "server.yaml"
    config.write_text("server: {max_sessions: 20, max_sessions_per_peer: 5}\n")
    server = live_server(tmp_path / "state", "--config", str(config))
    flood = ReqClient(server.endpoint, source="127.0.0.2")
    other = ReqClient(server.endpoint, source="127.0.0.3")
    try:
        replies = [flood.call("hello", hello_body(), job_id=f"flood-{i}", seq=0) for i in range(40)]
        assert [r["status"] for r in replies] == ["ok"] * 5 + ["error"] * 35
        assert {r["error"]["code"] for r in replies[5:]} == {ErrorCode.TOO_MANY_SESSIONS}
        assert "max_sessions_per_peer 5" in replies[5]["error"]["message"]
        # Another peer still gets its jobs; the flood's own ended job frees a place for it.
        assert other.call("hello", hello_body(), job_id="other", seq=0)["status"] == "ok"
        assert flood.call("goodbye", {"step": 0}, job_id="flood-0", seq=1)["status"] == "ok"
        assert flood.call("hello", hello_body(), job_id="flood-5", seq=0)["status"] == "ok"
    finally:
        flood.close()
        other.close()


@pytest.mark.parametrize("tuner, config, knob", [
    ("cosine", {"chunk": 3_000_000}, "chunk"), ("record", {"chunk": 10_001}, "chunk"),
    ("range_test", {"num_iter": 10**7}, "num_iter"), ("autolrs", {"k": 10**6}, "k"),
    ("hd", {"every": 10**6}, "every"), ("cosine", {"T_0": 10**12}, "T_0"),
])
def test_size_knobs_are_capped_at_the_hello(live_server, tmp_path, tuner, config, knob):
    server = live_server(tmp_path / "state")
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(AutoLRSConfigError, match=rf"bad_config.*'{knob}'.*at most"):
        AutoLRS(model, optimizer, tuner=tuner, config=config, server=server.endpoint, timeout=10.0)
    with pytest.raises(AutoLRSConfigError, match="max_steps.*at most"):
        AutoLRS(model, optimizer, tuner="cosine", server=server.endpoint, timeout=10.0, max_steps=10**10)
    assert not (server.state_dir / "jobs").exists() or not any((server.state_dir / "jobs").iterdir())
