"""Session storage: atomic state.json, decisions log, corrupt files moved aside, one server per dir."""

from __future__ import annotations

import logging
import math

import pytest

from autolrs.wire import protocol
from autolrs.actions import Observation
from autolrs.server.sessions import Session, SessionStore, StateDirLocked
from autolrs.tuners import make_tuner


def new_session(job_id="job-1", tuner="cosine", config=None, seed=3) -> Session:
    config = {"initial_lr": 0.1, "T_0": 10, **(config or {})} if tuner == "cosine" else {"initial_lr": 0.1}
    return Session(job_id=job_id, tuner_name=tuner, config=config, hello_config={"T_0": 10}, seed=seed,
                   tuner=make_tuner(tuner, config, seed), owner="client-a")


@pytest.fixture
def store(tmp_path):
    s = SessionStore(tmp_path / "state")
    yield s
    s.close()


def test_save_and_reload_round_trip(tmp_path, store):
    s = new_session()
    s.tuner.step, s.step = 7, 7
    s.last_client_id, s.last_seq = "client-a", 4
    s.last_reply = {"v": 1, "type": "report_reply", "status": "ok", "body": {"x": math.inf}}
    store.put(s)
    store.save(s)
    directory = tmp_path / "state" / "jobs" / "job-1"
    assert sorted(p.name for p in directory.iterdir()) == ["state.json"]  # no temp file left
    store.close()
    again = SessionStore(tmp_path / "state")
    try:
        r = again.get("job-1")
        assert r.to_state() == s.to_state()
        assert r.tuner.ask() == s.tuner.ask() and r.last_reply["body"]["x"] == math.inf
    finally:
        again.close()


def test_state_file_is_protocol_json(tmp_path, store):
    s = new_session()
    s.last_client_id, s.last_seq, s.last_reply = "c", 0, {"body": {"loss": math.nan}}
    store.save(s)
    data = (tmp_path / "state" / "jobs" / "job-1" / "state.json").read_bytes()
    assert b"NaN" not in data
    assert protocol.loads(data)["tuner_state"] == s.tuner.state_dict()


def test_append_log(tmp_path, store):
    s = new_session()
    store.append_log(s, {"kind": "report", "mean": math.nan})
    store.append_log(s, {"kind": "goodbye"})
    lines = (tmp_path / "state" / "jobs" / "job-1" / "decisions.jsonl").read_bytes().splitlines()
    assert [protocol.loads(x)["kind"] for x in lines] == ["report", "goodbye"]
    assert math.isnan(protocol.loads(lines[0])["mean"])


@pytest.mark.parametrize("content", [b"{not json", b"", b'{"format": 1}', b"[]",
                                     b'{"format": 99, "job_id": "bad"}'])
def test_corrupt_state_is_moved_aside(tmp_path, caplog, content):
    root = tmp_path / "state"
    good = SessionStore(root)
    good.save(new_session("good"))
    good.close()
    bad = root / "jobs" / "bad"
    bad.mkdir(parents=True)
    (bad / "state.json").write_bytes(content)
    (bad / "state.json.tmp-123").write_bytes(b"half")  # a crash mid-write leaves this
    with caplog.at_level(logging.WARNING, logger="autolrs.server.sessions"):
        store = SessionStore(root)
    try:
        assert [s.job_id for s in store] == ["good"]
        assert "cannot load" in caplog.text and "bad" in caplog.text
        names = sorted(p.name for p in bad.iterdir())
        assert len(names) == 1 and names[0].startswith("state.json.corrupt-")
        assert (bad / names[0]).read_bytes() == content
    finally:
        store.close()


def test_state_of_another_job_is_refused(tmp_path):
    root = tmp_path / "state"
    store = SessionStore(root)
    store.save(new_session("job-a"))
    store.close()
    (root / "jobs" / "job-a").rename(root / "jobs" / "job-b")
    store = SessionStore(root)
    try:
        assert len(store) == 0
    finally:
        store.close()


def test_state_dir_lock(tmp_path, store):
    with pytest.raises(StateDirLocked, match="in use"):
        SessionStore(tmp_path / "state")
    store.close()
    SessionStore(tmp_path / "state").close()


def test_snapshot_is_a_deep_copy():
    s = new_session()
    snap = s.snapshot()
    s.tuner.tell(Observation(step=5))
    assert Session.from_snapshot(snap).tuner.step == 0


def test_fsync_mode_writes_the_same_files(tmp_path):
    store = SessionStore(tmp_path / "state", fsync=True)
    try:
        s = new_session()
        store.save(s)
        store.append_log(s, {"kind": "hello"})
        d = tmp_path / "state" / "jobs" / "job-1"
        assert sorted(p.name for p in d.iterdir()) == ["decisions.jsonl", "state.json"]
        assert protocol.loads((d / "state.json").read_bytes())["job_id"] == "job-1"
    finally:
        store.close()
