"""Many jobs per server and authentication: the server tests' helpers are reused from there."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "server_tests"))
sys.path.insert(0, str(Path(__file__).parent))

from multijob_testlib import SECRET  # noqa: E402


@pytest.fixture
def secret_file(tmp_path):
    path = tmp_path / "secret"
    path.write_text(SECRET + "\n")  # the trailing newline is not part of the secret
    return path


@pytest.fixture(autouse=True)
def no_secret_in_env(monkeypatch):
    """Tests choose their secrets; a developer's exported one must not leak in."""
    monkeypatch.delenv("AUTOLRS_SECRET", raising=False)
    monkeypatch.delenv("AUTOLRS_SECRET_FILE", raising=False)
