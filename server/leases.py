"""Leases: when a job's client has not been heard from for ``lease_s`` seconds, the job expires.

Any request of the job (applied, resent or refused) renews its lease. An expired job is listed
by ``status`` as ``expired``, no longer counts against ``max_sessions``, and is unloaded from
memory by the reaper (its state.json stays). Expiry refuses nothing: a late client's report or
hello loads the session back from disk and carries on where it stopped, because a client
that merely trained a long segment without talking must not lose its tuning. Finished jobs
idle past the lease are unloaded too, and listed as finished.
"""

from __future__ import annotations

import threading
import time

from autolrs.server.sessions import ACTIVE, Session

EXPIRED = "expired"


class Leases:
    def __init__(self, lease_s: float):
        self.lease_s = float(lease_s)
        # job id -> wall time of its last request; sessions' own ``updated`` covers the rest
        # (e.g. after a restart, before the job's first request).
        self._seen: dict[str, float] = {}
        self._guard = threading.Lock()

    def touch(self, job_id: str, now: float | None = None) -> None:
        with self._guard:
            self._seen[job_id] = time.time() if now is None else now

    def forget(self, job_id: str) -> None:
        with self._guard:
            self._seen.pop(job_id, None)

    def last_activity(self, session: Session) -> float:
        return max(session.updated, self._seen.get(session.job_id, 0.0))

    def idle(self, session: Session, now: float | None = None) -> bool:
        """Whether the lease of ``session`` ran out (whatever its status)."""
        now = time.time() if now is None else now
        return now - self.last_activity(session) > self.lease_s

    def live(self, session: Session, now: float | None = None) -> bool:
        """Active and within its lease: what ``max_sessions`` counts."""
        return session.status == ACTIVE and not self.idle(session, now)

    def status(self, session: Session, now: float | None = None) -> str:
        """The status ``status`` lists: the session's own, or ``expired``."""
        return EXPIRED if session.status == ACTIVE and self.idle(session, now) else session.status

    def reap_interval(self) -> float:
        """How often the transport looks for sessions to unload."""
        return min(max(self.lease_s / 4, 0.05), 10.0)
