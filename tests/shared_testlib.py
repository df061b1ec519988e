"""Helpers importable from any test folder (a unique module name: every folder's conftest.py
is a module called ``conftest``, so tests must not import from it). What the benchmarks share
with the tests lives in :mod:`autolrs.testing`; only where the test data lies is here."""

from __future__ import annotations

import os
from pathlib import Path


def cifar_subset_dir() -> Path:
    """The CIFAR-10 subset the example tests train on: ``$CIFAR10_DIR``, else the shared data
    folder next to the checkout, else the one under /work (a checkout cloned elsewhere)."""
    candidates = [Path(os.environ["CIFAR10_DIR"])] if os.environ.get("CIFAR10_DIR") else []
    candidates += [Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar-10-subset-py",
                   Path("/work/shared/data/cifar-10-subset-py")]
    for folder in candidates:
        if (folder / "data_batch_1").is_file():
            return folder
    return candidates[0]
