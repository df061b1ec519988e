"""Each job's tuner summary as it stood after the job's last change: what ``status`` and the
dashboard list, so they never read a tuner in the middle of a request."""

from __future__ import annotations

import logging

from autolrs.server.keyed_locks import KeyedLocks
from autolrs.server.sessions import Session

log = logging.getLogger("autolrs.server.dispatcher")

__all__ = ["SummaryCache"]


class SummaryCache:
    """job id -> tuner summary after the job's last change. ``locks``: the jobs' request locks."""

    def __init__(self, locks: KeyedLocks):
        self._locks = locks
        self._cached: dict[str, dict | None] = {}

    def listed(self, s: Session) -> dict:
        """The summary ``status`` lists; no job's lock is waited for."""
        if s.job_id in self._cached:
            return self._cached[s.job_id] or {}
        # Not cached yet (loaded from disk): read the tuner only if no request is changing it.
        with self._locks.try_hold(s.job_id) as taken:
            if not taken:
                return {}
            return self.refresh(s) or {}

    def current(self, s: Session) -> dict | None:
        """The summary before a change (read from the tuner if none is cached); the caller
        holds the job's lock."""
        return self._cached[s.job_id] if s.job_id in self._cached else self.refresh(s)

    def refresh(self, s: Session) -> dict | None:
        """Read the tuner's summary now and cache it (None when ``summary()`` fails)."""
        try:
            summary = s.tuner.summary()
        except Exception:  # noqa: BLE001 - one broken tuner must not hide the others
            log.exception("summary() failed for job %s", s.job_id)
            summary = None
        self._cached[s.job_id] = summary
        return summary

    def get(self, job_id: str) -> dict | None:
        return self._cached.get(job_id)

    def forget(self, job_id: str) -> None:
        self._cached.pop(job_id, None)
