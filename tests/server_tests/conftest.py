"""Fixtures for the server tests (helpers live in server_testlib.py, importable from tests)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# Test modules import the helpers as a plain module, whatever pytest's import mode.
sys.path.insert(0, str(Path(__file__).parent))

from server_testlib import TIMEOUT_S, DispatcherHarness, ReqClient, ServerProcess, make_config  # noqa: E402

from autolrs.server.transport import make_server  # noqa: E402


@pytest.fixture
def harness(tmp_path):
    """A dispatcher and session store on a temporary state dir, no sockets."""
    h = DispatcherHarness(tmp_path / "state")
    yield h
    h.store.close()


@pytest.fixture
def req_client():
    """Factory of REQ clients with timeouts, closed at teardown."""
    made = []

    def factory(endpoint, **kw):
        c = ReqClient(endpoint, **kw)
        made.append(c)
        return c

    yield factory
    for c in made:
        c.close()


@pytest.fixture
def thread_server(tmp_path):
    """A real server (ROUTER socket on 127.0.0.1, random port) running in a daemon thread."""
    server = make_server(make_config(tmp_path / "state"))
    thread = server.serve_in_thread()
    yield server
    server.stop()
    thread.join(TIMEOUT_S)
    assert not thread.is_alive(), "serve_forever did not return after stop()"
    server.close()


@pytest.fixture
def server_process(tmp_path):
    """Factory: start ``python -m autolrs.server`` processes (SIGTERMed at teardown)."""
    started = []

    def start(state_dir=None, *args):
        p = ServerProcess(state_dir or tmp_path / "state", *args)
        started.append(p)
        return p

    yield start
    for p in started:
        p.close()
