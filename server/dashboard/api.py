"""The dashboard's JSON API: ``GET /api/jobs`` (the job list) and ``GET /api/jobs/<id>`` (one job).

Built from a source's rows (see :mod:`.sources`), each job's history journal (see
:mod:`autolrs.server.history`) and the tail of its ``decisions.jsonl``. Non-finite numbers
become ``null`` (standard JSON has none; a chart shows a gap). The files are followed
(:mod:`.follow`): a poll reads only what was appended since the last, whatever a job's length.
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from pathlib import Path
from typing import Any

from autolrs.wire import protocol

from autolrs.server import history
from autolrs.server.dashboard.follow import Follower

#: Decision-log records a job page shows (the newest), and how much of a log's end is read first.
DECISIONS_SHOWN = 200
DECISIONS_TAIL_BYTES = 512 * 1024
#: How much of a journal's end is read first for its last loss.
LAST_LOSS_TAIL_BYTES = 64 * 1024
#: Tuners that put back the weights they started from: all their steps are search.
MEASURING_TUNERS = ("range_test", "loss_diff")


def clean(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (for standard JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def encode(payload: Any) -> bytes:
    return json.dumps(clean(payload), separators=(",", ":"), allow_nan=False).encode("utf-8")


def search_train_steps(row: dict) -> tuple[int | None, int | None]:
    """Steps spent searching and training, where the tuner's summary tells them apart."""
    summary = row.get("summary") or {}
    if "search_steps" in summary and "train_steps" in summary:
        return (
            int(summary["search_steps"]) + int(summary.get("bounds_steps") or 0),
            int(summary["train_steps"]) + int(summary.get("warmup_steps") or 0),
        )
    if row.get("tuner") in MEASURING_TUNERS and isinstance(row.get("step"), int):
        return row["step"], 0
    return None, None


class DashboardAPI:
    """Builds the API's payloads from a source; thread-safe (the HTTP server is threaded)."""

    def __init__(self, source):
        self.source = source
        self.jobs_dir = Path(source.jobs_dir)
        self._histories = Follower(history.JobHistory, history.apply_record, cache_files=32)
        self._last_losses = Follower(
            lambda: None,
            history.last_loss_of,
            tail_bytes=LAST_LOSS_TAIL_BYTES,
            empty=lambda last: last is None,
            cache_files=1_000_000,
        )
        self._decisions = Follower(
            lambda: deque(maxlen=DECISIONS_SHOWN), _add_decision, tail_bytes=DECISIONS_TAIL_BYTES, cache_files=32
        )

    def jobs(self) -> dict:
        rows = self.source.rows()
        jobs = []
        for row in rows:
            last = self._last_losses.get(self.jobs_dir / row["job_id"] / history.FILENAME)
            jobs.append(self._compact(row, last))
        return {"server": self.source.server_info(), "time": time.time(), "jobs": jobs}

    def job(self, job_id: str) -> dict | None:
        """One job's page data; None when the job is unknown."""
        if not protocol.is_valid_job_id(job_id):
            return None
        rows = self.source.rows(only=job_id)
        if not rows:
            return None
        row = rows[0]
        directory = self.jobs_dir / job_id
        view = self._histories.get(directory / history.FILENAME, lambda h: h.view())
        job = self._compact(row, view["last_loss"])
        job["summary"] = row.get("summary") or {}
        decisions = self._decisions.get(directory / "decisions.jsonl", lambda records: list(reversed(records)))
        return {
            "server": self.source.server_info(),
            "time": time.time(),
            "job": job,
            "config": self.source.job_config(job_id),
            "history": view,
            "decisions": decisions,
        }

    @staticmethod
    def _compact(row: dict, last_loss: list | None) -> dict:
        summary = row.get("summary") or {}
        search, train = search_train_steps(row)
        return {
            "job_id": row["job_id"],
            "tuner": row.get("tuner"),
            "status": row.get("status"),
            "step": row.get("step"),
            "lr": row.get("lr"),
            "last_loss": None if last_loss is None else last_loss[1],
            "last_loss_step": None if last_loss is None else last_loss[0],
            "lease_left_s": row.get("lease_left_s"),
            "search_steps": search,
            "train_steps": train,
            "phase": summary.get("phase"),
            "stage": summary.get("stage"),
            "created": row.get("created"),
            "updated": row.get("updated"),
            "requests": row.get("requests"),
        }


# --- the decision log -----------------------------------------------------------------------------


def _add_decision(records: deque, record: Any) -> deque:
    if isinstance(record, dict):
        records.append(compact_decision(record))
    return records


def compact_decision(record: dict) -> dict:
    summary = record.get("summary") or {}
    obs = record.get("observation") or {}
    notes = []
    if record.get("resumed"):
        notes.append("resumed")
    if record.get("replaced_finished"):
        notes.append("replaced a finished session")
    if record.get("reason"):
        notes.append(f"reason: {record['reason']}")
    if record.get("client_step") is not None:
        notes.append(f"client at step {record['client_step']}")
    return {
        "time": record.get("time"),
        "seq": record.get("seq"),
        "kind": record.get("kind"),
        "step": record.get("step"),
        "plan": describe_plan(record.get("plan")),
        "losses": obs.get("n_losses"),
        "mean_loss": obs.get("mean_loss"),
        "last_loss": obs.get("last_loss"),
        "nonfinite": (obs["n_losses"] - obs["n_finite"]) if "n_losses" in obs and "n_finite" in obs else None,
        "evals": len(obs.get("evals") or []),
        "phase": summary.get("phase"),
        "stage": summary.get("stage"),
        "lr": summary.get("lr"),
        "note": "; ".join(notes),
    }


def describe_plan(plan: Any) -> str:
    """A plan as one line: ``restore stage · set_lr 0.05 · run 100``."""
    if not isinstance(plan, list):
        return ""
    parts = []
    for action in plan:
        if not isinstance(action, dict):
            continue
        op = action.get("op")
        if op == "set_lr":
            parts.append(f"set_lr {_num(action.get('lr'))}")
        elif op in ("checkpoint", "restore", "discard"):
            parts.append(f"{op} {action.get('slot')}")
        elif op == "probe":
            parts.append(f"probe {len(action.get('lrs') or [])} LRs")
        elif op == "run":
            text = f"run {action.get('steps')}"
            lrs = action.get("lrs")
            if lrs:
                text += f" (LR {_num(lrs[0])} \u2192 {_num(lrs[-1])})"
            if action.get("eval_every"):
                text += f", eval every {action['eval_every']}"
            if action.get("hypergrad"):
                text += f", hypergrad {action['hypergrad'].get('method')}"
            parts.append(text)
        elif op == "stop":
            parts.append(f"stop ({action.get('reason')})")
        else:
            parts.append(str(op))
    return " \u00b7 ".join(parts)


def _num(x: Any) -> str:
    return f"{x:.4g}" if isinstance(x, (int, float)) and not isinstance(x, bool) else str(x)
