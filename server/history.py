"""Each job's history for the dashboard: what happened, which the tuner's state does not keep.

A tuner keeps what it needs to decide (the current stage, the range test's curve while it
runs); the dashboard also wants what happened: the LR and the loss of every step, each AutoLRS
trial's loss window, every stage's record, the sweep behind automatic bounds. This module keeps
them per job, bounded whatever the job's length.

On disk, next to ``state.json``::

    jobs/<job_id>/history.jsonl   {"r": entry} per applied report, appended; once the file
                                  passes JOURNAL_BYTES it is rewritten (atomically) as one
                                  {"snapshot": history} line, and appending goes on after it

Recording needs nothing in memory (an entry is built from the report alone and appended), so
the server's memory does not grow with the jobs; a reader replays the file, and the history
survives a restart exactly as ``state.json`` does. A line cut short by a crash is skipped.
Compaction runs on a background thread, off the path of the reply (it replays the journal,
some milliseconds), under a per-job lock that the appends of that job also take.
What an entry holds, and the bounds (the downsampling rule) that keep a history small:
:mod:`autolrs.server.history_entry`. So a job's file stays under its snapshot (a few hundred kB
at most) plus JOURNAL_BYTES.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from autolrs.wire import protocol

from autolrs.server.history_entry import (
    EVAL_POINTS,
    MAX_STAGES,
    MAX_SWEEP,
    SERIES_POINTS,
    WINDOW_POINTS,
    WINDOW_STAGES,
    bucket_width,
    column_at,
    finite,
    make_entry,
    round7,
)
from autolrs.server.keyed_locks import KeyedLocks

log = logging.getLogger(__name__)

__all__ = [
    "FILENAME",
    "JOURNAL_BYTES",
    "SERIES_POINTS",
    "WINDOW_POINTS",
    "WINDOW_STAGES",
    "HistoryRecorder",
    "JobHistory",
    "apply_record",
    "bucket_width",
    "last_loss_of",
    "load",
    "make_entry",
    "replay",
]

FILENAME = "history.jsonl"
FORMAT = 1
#: The journal is compacted into one snapshot line once it is larger than this.
JOURNAL_BYTES = 512 * 1024


# --- the history a journal replays to -----------------------------------------------------------


class JobHistory:
    """The bounded history of one job, rebuilt from its journal with :meth:`apply`."""

    def __init__(self) -> None:
        self.reports = 0
        self.last_step = 0
        self.last_loss: list | None = None  # [step, value] of the last reported loss
        self.width = 1
        self.series: dict[int, list] = {}  # bucket -> [step, lr, sum, n, bad]
        self.eval_width = 1
        self.evals: dict[int, list] = {}  # bucket -> [step, sum, n]
        self.hyper: dict[int, list] = {}  # bucket -> [step, sum, n] (same width as evals)
        self.stages: dict[int, dict] = {}  # stage number -> record
        self.windows: dict[tuple[int, int], dict] = {}
        self.sweep: list[list] = []

    # -- replay

    def apply(self, entry: Mapping) -> None:
        self.reports += 1
        end = int(entry.get("e", 0))
        self.last_step = max(self.last_step, end)
        self._rebucket()
        w, first = entry.get("w", 1), entry.get("b", 0)
        for i, mean in enumerate(entry.get("m", ())):
            n = column_at(entry["n"], i)
            self._add_series(
                min(end, (first + i + 1) * w), column_at(entry["lr"], i), (mean or 0.0) * n, n, column_at(entry["x"], i)
            )
        if entry.get("last") is not None:
            self.last_loss = list(entry["last"])
        for step, value in entry.get("ev", ()):
            self._add_mean(self.evals, step, value)
        if "h" in entry:
            for j, value in enumerate(entry["h"]["v"]):
                self._add_mean(self.hyper, entry["h"]["t"] + j, value)
        if "stage" in entry:
            self._add_stage(entry["stage"])
        if "win" in entry:
            win = entry["win"]
            self.windows[(int(win["stage"]), int(win["trial"]))] = dict(win)
            self._trim_windows()
        if "sweep" in entry and len(self.sweep) < MAX_SWEEP:
            pairs = [list(p) for p in zip(entry["sweep"]["lr"], entry["sweep"]["loss"])]
            self.sweep.extend(pairs[: MAX_SWEEP - len(self.sweep)])

    def _rebucket(self) -> None:
        width = bucket_width(self.last_step, SERIES_POINTS)
        if width != self.width:
            old, self.series, self.width = self.series, {}, width
            for step, lr, total, n, bad in old.values():
                self._add_series(step, lr, total, n, bad)
        width = bucket_width(self.last_step, EVAL_POINTS)
        if width != self.eval_width:
            self.eval_width = width
            for name in ("evals", "hyper"):
                old = getattr(self, name)
                setattr(self, name, {})
                for step, total, n in old.values():
                    self._merge_mean(getattr(self, name), step, total, n)

    def _add_series(self, step: int, lr: Any, total: float, n: int, bad: int) -> None:
        b = (max(int(step), 1) - 1) // self.width
        point = self.series.get(b)
        if point is None:
            self.series[b] = [int(step), lr, total, n, bad]
            return
        if step >= point[0]:  # the bucket's point is its last step, with that step's LR
            point[0], point[1] = int(step), lr if lr is not None else point[1]
        point[2] += total
        point[3] += n
        point[4] += bad

    def _add_mean(self, table: dict, step: int, value: Any) -> None:
        if finite(value):
            self._merge_mean(table, step, value, 1)

    def _merge_mean(self, table: dict, step: int, total: float, n: int) -> None:
        b = (max(int(step), 1) - 1) // self.eval_width
        point = table.get(b)
        if point is None:
            table[b] = [int(step), total, n]
        else:
            point[0] = max(point[0], int(step))
            point[1] += total
            point[2] += n

    def _add_stage(self, record: Mapping) -> None:
        try:
            number = int(record["stage"])
        except (KeyError, TypeError, ValueError):
            return
        self.stages[number] = dict(record)
        while len(self.stages) > MAX_STAGES:
            del self.stages[min(self.stages)]

    def _trim_windows(self) -> None:
        newest = max(stage for stage, _ in self.windows)
        for key in [k for k in self.windows if k[0] <= newest - WINDOW_STAGES]:
            del self.windows[key]

    # -- snapshot (the compacted journal) and the dashboard's view

    def snapshot(self) -> dict:
        def rounded(table: dict) -> list:
            return [
                [p[0], *(round7(x) if isinstance(x, float) else x for x in p[1:])] for _, p in sorted(table.items())
            ]

        return {
            "format": FORMAT,
            "reports": self.reports,
            "last_step": self.last_step,
            "last_loss": self.last_loss,
            "series": rounded(self.series),
            "evals": rounded(self.evals),
            "hyper": rounded(self.hyper),
            "stages": [self.stages[s] for s in sorted(self.stages)],
            "windows": [self.windows[k] for k in sorted(self.windows)],
            "sweep": self.sweep,
        }

    @classmethod
    def from_snapshot(cls, snap: Mapping) -> "JobHistory":
        if snap.get("format") != FORMAT:
            raise ValueError(f"history snapshot format {snap.get('format')!r} is not {FORMAT}")
        h = cls()
        h.reports, h.last_step, h.last_loss = int(snap["reports"]), int(snap["last_step"]), snap["last_loss"]
        h.width = bucket_width(h.last_step, SERIES_POINTS)
        h.eval_width = bucket_width(h.last_step, EVAL_POINTS)
        for step, lr, total, n, bad in snap["series"]:
            h._add_series(step, lr, total, n, bad)
        for name in ("evals", "hyper"):
            for step, total, n in snap[name]:
                h._merge_mean(getattr(h, name), step, total, n)
        for record in snap["stages"]:
            h._add_stage(record)
        for win in snap["windows"]:
            h.windows[(int(win["stage"]), int(win["trial"]))] = dict(win)
        h.sweep = [list(p) for p in snap["sweep"]]
        return h

    def view(self) -> dict:
        """Columns for the dashboard's charts (means computed; None where a bucket had no finite loss)."""
        series = [self.series[b] for b in sorted(self.series)]
        evals = [self.evals[b] for b in sorted(self.evals)]
        hyper = [self.hyper[b] for b in sorted(self.hyper)]
        return {
            "reports": self.reports,
            "last_step": self.last_step,
            "last_loss": self.last_loss,
            "width": self.width,
            "eval_width": self.eval_width,
            "series": {
                "step": [p[0] for p in series],
                "lr": [p[1] for p in series],
                "loss": [p[2] / p[3] if p[3] else None for p in series],
                "nonfinite": [p[4] for p in series],
            },
            "evals": {"step": [p[0] for p in evals], "value": [p[1] / p[2] for p in evals]},
            "hypergrad": {"step": [p[0] for p in hyper], "value": [p[1] / p[2] for p in hyper]},
            "stages": [self.stages[s] for s in sorted(self.stages)],
            "windows": [self.windows[k] for k in sorted(self.windows)],
            "sweep": {"lr": [p[0] for p in self.sweep], "loss": [p[1] for p in self.sweep]},
        }


def apply_record(history: JobHistory, record: Mapping) -> JobHistory:
    """One journal record applied: a snapshot replaces the history, an entry adds to it."""
    if "snapshot" in record:
        return JobHistory.from_snapshot(record["snapshot"])
    history.apply(record["r"])
    return history


def replay(lines: Iterable[bytes], history: JobHistory | None = None) -> JobHistory:
    """Apply journal lines to ``history`` (a new one by default); undecodable lines are skipped."""
    history = history if history is not None else JobHistory()
    for line in lines:
        if not line.strip():
            continue
        try:
            history = apply_record(history, protocol.loads(line))
        except Exception as exc:  # noqa: BLE001 - a torn or damaged line loses one report, not the job
            log.warning("skipped a damaged history line (%s: %s)", type(exc).__name__, exc)
    return history


# --- writing (the server) -----------------------------------------------------------------------


class HistoryRecorder:
    """Appends each applied report to its job's journal. Called by the dispatcher with the job's
    lock held; never raises. Journals past ``journal_bytes`` are compacted on a background
    thread (``background=False``: at once, in the caller's thread)."""

    def __init__(
        self, jobs_dir: str | Path, fsync: bool = False, journal_bytes: int = JOURNAL_BYTES, background: bool = True
    ):
        self.jobs_dir = Path(jobs_dir)
        self.fsync = fsync
        self.journal_bytes = journal_bytes
        self.background = background
        # One job's appends and its compaction never interleave.
        self._locks = KeyedLocks()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._queued: set[str] = set()
        self._guard = threading.Lock()
        self._idle = threading.Condition(self._guard)
        self._thread: threading.Thread | None = None

    def path(self, job_id: str) -> Path:
        return self.jobs_dir / job_id / FILENAME

    def start(self, job_id: str) -> None:
        """A new session of ``job_id``: drop the history of the one it replaces, if any."""
        try:
            with self._locks.hold(job_id):
                self.path(job_id).unlink(missing_ok=True)
        except OSError:
            log.exception("could not remove the old history of job %s", job_id)

    def record_report(
        self,
        job_id: str,
        plan: Sequence[Mapping] | None,
        body: Mapping,
        losses: Sequence[float],
        evals: Sequence[Sequence[float]],
        hypergrad: Mapping | None,
        before: Mapping | None,
        after: Mapping | None,
    ) -> None:
        try:
            entry = make_entry(
                plan, body.get("step", 0), body.get("steps", 0), losses, evals, hypergrad, body.get("lr"), before, after
            )
            self.append(job_id, entry)
        except Exception:  # noqa: BLE001 - the history is for people; the decision is saved
            log.exception("could not record the history of job %s", job_id)

    def append(self, job_id: str, entry: Mapping) -> None:
        path = self.path(job_id)
        line = protocol.dumps({"r": entry}) + b"\n"
        with self._locks.hold(job_id):
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "ab") as f:
                f.write(line)
                if self.fsync:
                    f.flush()
                    os.fsync(f.fileno())
                size = f.tell()
        if size > self.journal_bytes:
            if self.background:
                self._schedule(job_id)
            else:
                self.compact(job_id)

    def compact(self, job_id: str) -> None:
        """Rewrite the journal as one snapshot line (atomically: a reader sees old or new)."""
        path = self.path(job_id)
        with self._locks.hold(job_id):
            try:
                with open(path, "rb") as f:
                    history = replay(f)
            except FileNotFoundError:
                return
            for stale in path.parent.glob(f"{FILENAME}.tmp-*"):  # left by a crash mid-compaction
                stale.unlink(missing_ok=True)
            tmp = path.with_name(f"{FILENAME}.tmp-{os.getpid()}")
            with open(tmp, "wb") as f:
                f.write(protocol.dumps({"snapshot": history.snapshot()}) + b"\n")
                if self.fsync:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, path)

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until no compaction is queued or running; returns whether that happened in time."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._queued, timeout)

    def _schedule(self, job_id: str) -> None:
        with self._guard:
            if job_id in self._queued:
                return
            self._queued.add(job_id)
            if self._thread is None:
                self._thread = threading.Thread(target=self._compact_queued, name="autolrs-history", daemon=True)
                self._thread.start()
        self._queue.put(job_id)

    def _compact_queued(self) -> None:
        while True:
            job_id = self._queue.get()
            try:
                self.compact(job_id)
            except Exception:  # noqa: BLE001 - the journal stays as it was; tried again when it grows
                log.exception("could not compact the history of job %s", job_id)
            finally:
                with self._idle:
                    self._queued.discard(job_id)
                    self._idle.notify_all()


# --- reading -------------------------------------------------------------------------------------


def load(path: str | Path) -> JobHistory:
    """The history a journal file holds (an empty one when there is no file). The dashboard
    follows journals incrementally instead (autolrs.server.dashboard.follow)."""
    try:
        with open(path, "rb") as f:
            return replay(f)
    except FileNotFoundError:
        return JobHistory()


def last_loss_of(last: list | None, record: Mapping) -> list | None:
    """Fold a journal record into the last ``[step, loss]`` seen (None until one is)."""
    found = record["snapshot"].get("last_loss") if "snapshot" in record else record["r"].get("last")
    return found if found is not None else last
