"""Fixtures shared by every test folder: real data (scikit-learn's digits), a small model, and
a real server process on a random loopback port."""

from __future__ import annotations

import pytest
import torch

from autolrs.server import ServerProcess
from autolrs.testing.training import digits as load_digits_tensors
from autolrs.testing.training import make_mlp

# Tiny models gain nothing from intra-op threads, and spinning OpenMP workers compete with the
# server process for the two cores.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits():
    """The 1,797 8x8 digit images of scikit-learn as (x float32 in [0, 1], y int64) tensors."""
    return load_digits_tensors()


@pytest.fixture
def mlp():
    return make_mlp


@pytest.fixture
def live_server(tmp_path):
    """Factory: start ``python -m autolrs.server`` on 127.0.0.1 (random port unless given);
    every process started is stopped at teardown."""
    started: list[ServerProcess] = []

    def start(state_dir=None, *args, port=0):
        proc = ServerProcess(state_dir or tmp_path / "state", *args, port=port)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.close()
