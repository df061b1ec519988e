"""Fixtures for the callback tests (helpers live in callbacks_testlib.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from callbacks_testlib import ScriptedPeer  # noqa: E402


@pytest.fixture
def peer():
    """Factory of scripted peers (closed at teardown): ``peer(handler, port=None)``."""
    made = []

    def start(handler, port=None):
        p = ScriptedPeer(handler, port=port)
        made.append(p)
        return p

    yield start
    for p in made:
        p.close()


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The models here are tiny: extra intra-op threads only fight over a busy CI box."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
