"""Helpers importable from any test folder (a unique module name: every folder's conftest.py
is a module called ``conftest``, so tests must not import from it). What the benchmarks share
with the tests lives in :mod:`autolrs.testing`; here: where the test data lies, and a job's
decision log read back with the LR of every step it dictates."""

from __future__ import annotations

import json
import os
from pathlib import Path


def decisions(state_dir: Path, job: str) -> list[dict]:
    """The records of a job's ``decisions.jsonl`` under a server's state folder."""
    lines = (Path(state_dir) / "jobs" / job / "decisions.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def lr_history(records: list[dict]) -> list[float]:
    """The LR of every step as the server's plans dictate (set_lr, run with or without lrs)."""
    lrs: list[float] = []
    lr = None
    for record in records:
        for action in record.get("plan") or []:
            if action["op"] == "set_lr":
                lr = action["lr"]
            elif action["op"] == "run":
                segment = action.get("lrs") or [lr] * action["steps"]
                lrs += segment
                lr = segment[-1]
    return lrs


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
