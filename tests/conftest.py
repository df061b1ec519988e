"""Fixtures shared by every test folder: real data (scikit-learn's digits), a small model, and
a real server process on a random loopback port."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
import torch

from autolrs.server import ServerProcess
from autolrs.testing.training import digits as load_digits_tensors
from autolrs.testing.training import make_mlp

# Tiny models gain nothing from intra-op threads, and spinning OpenMP workers compete with the
# server process for the two cores.
torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def private_cache():
    """The embedded servers of ``server="auto"`` keep their state in a cache folder of this
    session (never the user's), and no ``$AUTOLRS_SERVER`` of the environment applies."""
    saved = {k: os.environ.get(k) for k in ("AUTOLRS_CACHE_DIR", "AUTOLRS_SERVER")}
    folder = tempfile.mkdtemp(prefix="autolrs-test-cache-")
    os.environ["AUTOLRS_CACHE_DIR"] = folder
    os.environ.pop("AUTOLRS_SERVER", None)
    yield folder
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    shutil.rmtree(folder, ignore_errors=True)


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
