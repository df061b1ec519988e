"""Helpers for the DDP tests: the server's decision log of a job, and the LRs it dictates."""

from __future__ import annotations

import json
from pathlib import Path


def decisions(state_dir: Path, job: str) -> list[dict]:
    lines = (state_dir / "jobs" / job / "decisions.jsonl").read_text().splitlines()
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
