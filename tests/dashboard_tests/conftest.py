"""Fixtures for the dashboard tests: a socket-less dispatcher (the server tests' harness) and a
headless browser, skipped with the reason when none can run here."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The server tests' helpers (a dispatcher without sockets), importable as a plain module.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server_tests"))

from server_testlib import DispatcherHarness  # noqa: E402

from autolrs.testing import browser as headless  # noqa: E402


@pytest.fixture
def harness(tmp_path):
    h = DispatcherHarness(tmp_path / "state")
    yield h
    h.store.close()


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium per test module (starting one takes a second or two)."""
    reason = headless.missing()
    if reason is not None:
        pytest.skip(f"no headless browser: {reason}")
    b = headless.Browser()
    yield b
    b.close()
