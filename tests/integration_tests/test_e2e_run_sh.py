"""run.sh starts a server, runs the CIFAR-10 example against it, and stops the server whether
the example succeeds or fails. Runs inside the virtual environment run.sh made (as `bash run.sh
test` does); the data is the CIFAR-10 subset shipped beside the repository."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autolrs.server import ServerProcess
from shared_testlib import cifar_subset_dir

ROOT = Path(__file__).resolve().parents[2]
DATA = cifar_subset_dir()

pytestmark = [
    pytest.mark.skipif(sys.prefix == sys.base_prefix, reason="needs to run inside a virtual environment"),
    pytest.mark.skipif(not (DATA / "data_batch_1").is_file(), reason=f"no CIFAR-10 data at {DATA}"),
]


def run_sh(out: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "AUTOLRS_VENV": sys.prefix, "AUTOLRS_OUT": str(out), "CIFAR10_DIR": str(DATA)}
    return subprocess.run(["bash", str(ROOT / "run.sh"), *args], capture_output=True, text=True, env=env,
                          timeout=300, cwd=ROOT)


def assert_server_stopped(out: Path) -> None:
    # The server holds a lock on its state dir while it runs: a new server can take it only if
    # the old one is gone.
    with ServerProcess(out / "server-state", ready_timeout=20):
        pass


def test_run_sh_trains_the_example_and_stops_the_server(tmp_path):
    out = tmp_path / "run"
    result = run_sh(out, "--tuner", "cosine", "--tuner-config", "{T_0: 10}", "--max-steps", "30", "--no-progress")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 30 and len(summary["lrs"]) == 30
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    assert summary["tuner_summary"]["step"] > 0 and summary["tuner_summary"]["lr"] > 0  # from the goodbye reply
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "listening on" in (out / "server.out").read_text()
    assert_server_stopped(out)


def test_run_sh_stops_the_server_when_the_example_fails(tmp_path):
    out = tmp_path / "run"
    result = run_sh(out, "--tuner", "no_such_tuner", "--max-steps", "5", "--no-progress")
    assert result.returncode != 0
    assert "no_such_tuner" in result.stderr
    assert_server_stopped(out)


def test_run_sh_defaults_to_the_auto_tuner_and_reports_its_account(tmp_path):
    out = tmp_path / "run"
    result = run_sh(out, "--max-steps", "80", "--batch-size", "32", "--no-progress")
    assert result.returncode == 0, result.stderr[-3000:]
    text = (out / "summary.json").read_text()
    assert text.startswith("{\n")  # indented, for people
    summary = json.loads(text)
    assert summary["tuner"] == "auto" and summary["steps"] == 80
    account = summary["tuner_summary"]
    assert account["search_steps"] > 0 and 2 <= len(account["trials"]) <= 3  # the first worse trial ends them
    # The range test and the losing trials were undone: the callback says which steps.
    assert summary["discarded"] and summary["discarded"][0][0] == 0
    assert "steps searching" in result.stdout and "peak LR" in result.stdout
    assert_server_stopped(out)
