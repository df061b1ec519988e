"""The dashboard's JSON API on a real server process (``--http-port 0``) while the callback
trains a real model on scikit-learn's digits; browse mode over the state folder it leaves;
tokens, read-only refusals, and the history after a restart."""

from __future__ import annotations

import subprocess
import sys

from autolrs.callbacks import AutoLRS
from autolrs.server.dashboard import dashboard_token

from dashboard_testlib import DashboardProcess, DigitsLoop, get, get_json, wait_for

SECRET = "dashboard-test-secret-0123456789abcdef"
AUTOLRS_CONFIG = {"lr_min": 1e-3, "lr_max": 1.0, "tau": 40, "k": 3, "tau_max": 80}


def start_autolrs(server, digits, job="digits-dash", max_steps=300, **kw):
    loop = DigitsLoop(digits)
    cb = AutoLRS(loop.model, loop.optimizer, tuner="autolrs", config=AUTOLRS_CONFIG, server=server.endpoint,
                 job=job, max_steps=max_steps, seed=0, **kw)
    return loop, cb


def test_api_lists_a_training_job_and_its_page_data(live_server, digits, tmp_path):
    server = live_server(tmp_path / "state", "--http-port", "0")
    assert server.dashboard_url.startswith("http://127.0.0.1:") and server.dashboard_url.endswith("/")
    loop, cb = start_autolrs(server, digits)
    try:
        assert loop.train(cb, 160) == 160  # two stages: 3 trials of 4 steps + 40, 3 of 8 + 80
        listing = get_json(server.dashboard_url + "api/jobs")
        assert listing["server"]["mode"] == "live"
        [row] = listing["jobs"]
        assert row["job_id"] == "digits-dash" and row["tuner"] == "autolrs" and row["status"] == "active"
        assert row["step"] > 0 and AUTOLRS_CONFIG["lr_min"] <= row["lr"] <= AUTOLRS_CONFIG["lr_max"]
        assert row["search_steps"] > 0 and row["train_steps"] > 0
        assert row["search_steps"] + row["train_steps"] == row["step"]
        assert 0 < row["last_loss"] < 5 and 0 < row["lease_left_s"] <= 3600

        page = get_json(server.dashboard_url + "api/jobs/digits-dash")
        job, hist = page["job"], page["history"]
        assert job["summary"]["stage"] >= 2 and page["config"]["config"]["k"] == 3
        # LR and loss against step: every reported loss's step is there, LRs within the interval.
        steps, losses = hist["series"]["step"], hist["series"]["loss"]
        assert steps == sorted(steps) and steps[-1] == row["step"]
        assert all(1e-3 <= lr <= 1.0 for lr in hist["series"]["lr"])
        assert sum(loss is not None for loss in losses) >= 3 * 4 + 3 * 8  # every trial step reported a loss
        # Stage 1's record with its three trials, their loss windows, forecasts and the winner.
        stage1 = hist["stages"][0]
        assert stage1["stage"] == 1 and len(stage1["trials"]) == 3 and stage1["winner"] in [
            t["lr"] for t in stage1["trials"]]
        windows = {(w["stage"], w["trial"]): w for w in hist["windows"]}
        for i, trial in enumerate(stage1["trials"]):
            assert windows[(1, i)]["lr"] == trial["lr"] and len(windows[(1, i)]["points"]) == 4
        # The decision log, newest first.
        assert page["decisions"][0]["kind"] == "report" and page["decisions"][-1]["kind"] == "hello"
        assert "run" in page["decisions"][0]["plan"]
    finally:
        cb.close()
    finished = wait_for(lambda: [r for r in get_json(server.dashboard_url + "api/jobs")["jobs"]
                                 if r["status"] == "finished"], what="the job listed as finished")
    assert finished[0]["job_id"] == "digits-dash"


def test_refusals_read_only_unknown_jobs_and_foreign_hosts(live_server, tmp_path):
    server = live_server(tmp_path / "state", "--http-port", "0")
    url = server.dashboard_url
    for method in ("POST", "PUT", "DELETE"):
        status, headers, _ = get(url + "api/jobs", method=method)
        assert status == 405 and headers["Allow"] == "GET, HEAD"
    assert get(url + "api/jobs/no-such-job")[0] == 404
    assert get(url + "api/jobs/..%2F..%2Fetc")[0] == 404
    assert get(url + "static/../cli.py")[0] == 404
    assert get(url + "nothing-here")[0] == 404
    # DNS rebinding: a page served from another name must not read a loopback dashboard.
    assert get(url + "api/jobs", headers={"Host": "attacker.example:80"})[0] == 403
    status, headers, body = get(url)
    assert status == 200 and b"<table id=\"jobs\">" in body
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert get(url + "api/jobs")[0] == 200  # no secret: no token needed


def test_a_server_with_a_secret_asks_for_the_token(live_server, tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOLRS_SECRET", SECRET)
    server = live_server(tmp_path / "state", "--http-port", "0")
    token = dashboard_token(SECRET.encode())
    base, _, query = server.dashboard_url.partition("?")
    assert query == f"token={token}"  # the printed URL opens it
    assert get(base + "api/jobs")[0] == 401
    assert get(base + "api/jobs", token="0" * 32)[0] == 401
    assert get(base + "api/jobs", token=token)[0] == 200
    assert get(base + f"api/jobs?token={token}")[0] == 200
    # The page opened with ?token= leaves a cookie that authorises the pages' API calls.
    status, headers, _ = get(server.dashboard_url)
    cookie = headers["Set-Cookie"]
    assert status == 200 and cookie.startswith(f"autolrs_dashboard_token={token};") and "HttpOnly" in cookie
    assert get(base + "api/jobs", headers={"Cookie": cookie.split(";")[0]})[0] == 200
    # The same token from the command line, for whoever holds the secret.
    out = subprocess.run([sys.executable, "-m", "autolrs.server", "dashboard-token"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == token


def test_start_up_errors_are_clear(tmp_path):
    """A public dashboard address without a secret, and a folder that holds no jobs."""
    out = subprocess.run([sys.executable, "-m", "autolrs.server", "--port", "0", "--state-dir", str(tmp_path / "s"),
                          "--http-port", "0", "--http-host", "0.0.0.0"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "refusing to bind 0.0.0.0" in out.stderr
    out = subprocess.run([sys.executable, "-m", "autolrs.server", "dashboard", "--state-dir", str(tmp_path / "nope")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "not an autolrs state dir" in out.stderr


def test_history_survives_a_restart_and_a_finished_folder_can_be_browsed(live_server, digits, tmp_path):
    state = tmp_path / "state"
    server = live_server(state, "--http-port", "0")
    loop, cb = start_autolrs(server, digits, job="digits-restart", max_steps=160)
    with cb:
        assert loop.train(cb, 200) == 160
    before = get_json(server.dashboard_url + "api/jobs/digits-restart")
    server.close()

    again = live_server(state, "--http-port", "0")
    after = get_json(again.dashboard_url + "api/jobs/digits-restart")
    assert after["history"] == before["history"] and after["job"]["status"] == "finished"
    again.close()

    browse = DashboardProcess(state)
    try:
        listing = get_json(browse.url + "api/jobs")
        assert listing["server"]["mode"] == "browse"
        [row] = listing["jobs"]
        assert row["job_id"] == "digits-restart" and row["status"] == "finished" and row["step"] == 160
        page = get_json(browse.url + "api/jobs/digits-restart")
        assert page["history"] == before["history"]
        assert page["job"]["summary"]["stage"] == before["job"]["summary"]["stage"]
        assert page["decisions"] == before["decisions"]
        # Read-only: nothing was written, locked or moved in the folder.
        assert sorted(p.name for p in (state / "jobs" / "digits-restart").iterdir()) == [
            "decisions.jsonl", "history.jsonl", "state.json"]
    finally:
        assert browse.close() == 0


def test_damaged_state_files_are_listed_as_unreadable_and_left_alone(tmp_path):
    damaged = {"bad-json": b"{not json", "empty": b""}
    for job, content in damaged.items():
        (tmp_path / "state" / "jobs" / job).mkdir(parents=True)
        (tmp_path / "state" / "jobs" / job / "state.json").write_bytes(content)
    browse = DashboardProcess(tmp_path / "state")
    try:
        rows = get_json(browse.url + "api/jobs")["jobs"]
        assert [(r["job_id"], r["status"]) for r in rows] == [("bad-json", "unreadable"), ("empty", "unreadable")]
        assert get_json(browse.url + "api/jobs/empty")["history"]["reports"] == 0
        for job, content in damaged.items():
            assert (tmp_path / "state" / "jobs" / job / "state.json").read_bytes() == content
    finally:
        browse.close()


def test_host_header_rule():
    from autolrs.server.dashboard.access import host_allowed

    for host in ("127.0.0.1:8080", "localhost:8080", "localhost", "[::1]:8080", "127.0.0.2:80"):
        assert host_allowed("127.0.0.1", host), host
    for host in ("attacker.example", "attacker.example:8080", "10.0.0.1:8080", "", None):
        assert not host_allowed("127.0.0.1", host), host
    assert host_allowed("0.0.0.0", "server.example:8080")  # bound publicly: the token guards it


def test_dashboard_config_keys_are_checked():
    import pytest

    from autolrs.errors import ConfigError
    from autolrs.server.config import load_config

    assert load_config().http_port is None  # no dashboard unless asked for
    config = load_config(overrides={"server": {"http_port": "0", "http_host": "::1"}})
    assert config.http_port == 0 and config.http_host == "::1"
    with pytest.raises(ConfigError, match="server.http_port"):
        load_config(overrides={"server": {"http_port": 70000}})
    with pytest.raises(ConfigError, match="server.http_host"):
        load_config(overrides={"server": {"http_host": ""}})
