"""run.sh on a checkout without data: one clear line, a non-zero exit, and nothing started or
left behind; ``run.sh --help`` only prints help. Runs inside the virtual environment run.sh made
(as ``bash run.sh test`` does)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(sys.prefix == sys.base_prefix, reason="needs to run inside a virtual environment")


def run_sh(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "AUTOLRS_VENV": sys.prefix, "AUTOLRS_OUT": str(tmp_path / "run"), **env}
    return subprocess.run(["bash", str(ROOT / "run.sh"), *args], capture_output=True, text=True, env=env,
                          timeout=300, cwd=ROOT)


def test_without_data_one_line_and_nothing_left(tmp_path):
    empty = tmp_path / "no-data"
    empty.mkdir()
    result = run_sh(tmp_path, "--max-steps", "5", CIFAR10_DIR=str(empty))
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if not line.startswith("run.sh: installing")]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"run.sh: no CIFAR-10 python batches in {empty}") and "CIFAR10_DIR" in lines[0]
    assert "Traceback" not in result.stderr and "server ready" not in result.stderr
    assert not (tmp_path / "run").exists()  # no run folder, so no server was started either


def test_an_explicit_data_dir_is_the_one_checked(tmp_path):
    missing = tmp_path / "elsewhere"
    result = run_sh(tmp_path, "--data-dir", str(missing), CIFAR10_DIR=str(ROOT))
    assert result.returncode == 1 and f"no CIFAR-10 python batches in {missing}" in result.stderr


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_only_prints_help(tmp_path, flag):
    result = run_sh(tmp_path, flag)
    assert result.returncode == 0, result.stderr
    assert "bash run.sh test" in result.stdout and "--tuner" in result.stdout  # run.sh's and the example's
    assert not (tmp_path / "run").exists() and "server ready" not in result.stderr
