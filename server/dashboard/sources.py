"""Where the dashboard's job rows come from: a running server, or a state folder on disk.

Both give the same rows as ``status`` (job id, tuner, status, step, LR, times, the tuner's
summary) plus ``lease_left_s``, and each job's config. Neither waits for a job's lock: the live
source reads the summaries the dispatcher caches after each change; the folder source reads
each ``state.json`` (written atomically, so never half) and asks a tuner rebuilt from it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import autolrs
from autolrs.wire import protocol

from autolrs.server.dispatcher import Dispatcher
from autolrs.server.sessions import ACTIVE, Session

log = logging.getLogger(__name__)


class LiveSource:
    """The jobs of the server this process runs."""

    mode = "live"

    def __init__(self, dispatcher: Dispatcher):
        self.dispatcher = dispatcher
        self.jobs_dir = dispatcher.store.jobs_dir
        self.state_dir = dispatcher.store.state_dir

    def rows(self, only: str | None = None) -> list[dict]:
        """The status rows of every job (or only job ``only``'s), with ``lease_left_s``."""
        now = time.time()
        rows = self.dispatcher.rows(now, only)
        sessions = {s.job_id: s for s in self.dispatcher.store.listing()[0] if only is None or s.job_id == only}
        leases = self.dispatcher.leases
        for row in rows:
            session = sessions.get(row["job_id"])
            row["lease_left_s"] = (
                leases.lease_s - (now - leases.last_activity(session))
                if session is not None and row["status"] == ACTIVE
                else None
            )
        return rows

    def job_config(self, job_id: str) -> dict | None:
        """``{"config", "hello_config", "seed"}`` of a job (from memory, else its state.json)."""
        session = self.dispatcher.store.sessions.get(job_id)
        if session is not None:
            return {"config": session.config, "hello_config": session.hello_config, "seed": session.seed}
        state = _read_state(self.jobs_dir / job_id / "state.json")
        return None if state is None else _config_of(state)

    def server_info(self) -> dict:
        return {
            "mode": self.mode,
            "version": autolrs.__version__,
            "state_dir": str(self.state_dir),
            "uptime_s": round(time.monotonic() - self.dispatcher.started, 3),
            "lease_s": self.dispatcher.leases.lease_s,
        }


class StateDirSource:
    """The jobs saved under a state folder, with no server running (``autolrs-server dashboard``).

    Reads only: no lock is taken and no file is moved or written, so it can also watch a
    folder a server is using. Each job's row is rebuilt when its state.json changes.
    """

    mode = "browse"

    def __init__(self, state_dir: str | Path):
        self.state_dir = Path(state_dir).resolve()
        self.jobs_dir = self.state_dir / "jobs"
        if not self.jobs_dir.is_dir():
            raise FileNotFoundError(f"{self.state_dir} holds no jobs/ folder: not an autolrs state dir")
        # job id -> (stat key, row, config)
        self._cache: dict[str, tuple[tuple, dict, dict | None]] = {}
        self._guard = threading.Lock()

    def rows(self, only: str | None = None) -> list[dict]:
        """The rows of every job under the folder (or only job ``only``'s)."""
        with self._guard:
            seen = set()
            directories = [self.jobs_dir / only] if only is not None else self.jobs_dir.iterdir()
            for directory in sorted(p for p in directories if p.is_dir()):
                job_id = directory.name
                if not protocol.is_valid_job_id(job_id):
                    continue
                try:
                    st = os.stat(directory / "state.json")
                except FileNotFoundError:
                    continue
                seen.add(job_id)
                key = (st.st_ino, st.st_size, st.st_mtime_ns)
                cached = self._cache.get(job_id)
                if cached is None or cached[0] != key:
                    self._cache[job_id] = (key, *self._load(directory))
            if only is not None:
                return [dict(self._cache[only][1])] if only in seen else []
            for gone in set(self._cache) - seen:
                del self._cache[gone]
            return [dict(self._cache[job][1]) for job in sorted(self._cache)]

    def job_config(self, job_id: str) -> dict | None:
        with self._guard:
            cached = self._cache.get(job_id)
        return None if cached is None else cached[2]

    def server_info(self) -> dict:
        return {
            "mode": self.mode,
            "version": autolrs.__version__,
            "state_dir": str(self.state_dir),
            "uptime_s": None,
            "lease_s": None,
        }

    @staticmethod
    def _load(directory: Path) -> tuple[dict, dict | None]:
        state = _read_state(directory / "state.json")
        if state is None:
            return {
                "job_id": directory.name,
                "tuner": None,
                "status": "unreadable",
                "step": None,
                "lr": None,
                "created": None,
                "updated": None,
                "requests": None,
                "summary": {},
                "lease_left_s": None,
            }, None
        try:
            summary = Session.from_state(state).tuner.summary()
        except Exception as exc:  # noqa: BLE001 - show the job without its summary
            log.warning("cannot rebuild the tuner of job %s: %s", directory.name, exc)
            summary = {}
        row = {
            "job_id": state.get("job_id", directory.name),
            "tuner": state.get("tuner"),
            "status": state.get("status"),
            "step": state.get("step"),
            "lr": summary.get("lr"),
            "created": state.get("created"),
            "updated": state.get("updated"),
            "requests": state.get("requests"),
            "summary": summary,
            "lease_left_s": None,
        }
        return row, _config_of(state)


def _read_state(path: Path) -> dict | None:
    try:
        state = protocol.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - a damaged file: the job is listed as unreadable
        log.warning("cannot read %s: %s", path, exc)
        return None
    return state if isinstance(state, dict) else None


def _config_of(state: dict) -> dict:
    return {"config": state.get("config"), "hello_config": state.get("hello_config"), "seed": state.get("seed")}
