"""Who may drive a job, and how many jobs the server and each peer may hold.

A job belongs to the trainer that created it: the hello that creates a job gets the job's
credential in its reply (random, see :mod:`autolrs.server.security`; the server keeps only its
SHA-256), and every later hello, report and goodbye of the job must carry it. Without it a
request is refused with ``job_conflict`` and a message that says nothing about the job. A hello
with the credential from another client takes the job over (a trainer restarted from its
checkpoint); the earlier client no longer drives it. A request older than its client's last
applied one is ``stale_seq``. A new job is refused with ``too_many_sessions`` when
``max_sessions`` live sessions exist, or its peer holds ``max_sessions_per_peer`` of them.
"""

from __future__ import annotations

import threading
from typing import NamedTuple

from autolrs.wire.protocol import ErrorCode, ProtocolError

from autolrs.server import security
from autolrs.server.config import ServerConfig
from autolrs.server.leases import Leases
from autolrs.server.sessions import FINISHED, Session, SessionStore

__all__ = ["Issue", "JobOwnership", "peer_identity", "stale", "with_credential"]


class Issue(NamedTuple):
    """A reply that hands out a new credential (see ``JobRequests._apply``)."""

    reply: dict
    credential: str


def with_credential(reply: dict, credential: str) -> dict:
    """A copy of a hello reply carrying ``credential`` (the cached reply never holds it)."""
    return {**reply, "body": {**reply["body"], "credential": credential}}


def peer_identity(peer: str | None) -> str:
    """Who a session quota counts a new job against: the peer's address ("local" without one)."""
    return peer or "local"


def stale(session: Session, seq: int) -> ProtocolError:
    return ProtocolError(
        ErrorCode.STALE_SEQ, f"seq {seq} is older than the last applied seq {session.last_seq} of this client"
    )


class JobOwnership:
    """The checks of who sends a job's requests, and the session quotas."""

    def __init__(self, config: ServerConfig, store: SessionStore, leases: Leases):
        self.config = config
        self.store = store
        self.leases = leases
        # job id -> the credential its creating hello issued, until the client shows it has it
        # (a resend of that hello gets the same one); never saved, never logged.
        self.issued: dict[str, str] = {}
        # Counting live sessions and adding one must not interleave (max_sessions).
        self.admission = threading.Lock()

    def admit(self, job_id: str, now: float, identity: str) -> None:
        """Refuse a new session when ``max_sessions`` live ones exist, or when its peer holds
        ``max_sessions_per_peer`` of them (expired and finished ones do not count)."""
        live = [s for s in self.store.listing()[0] if self.leases.live(s, now)]
        if len(live) >= self.config.max_sessions:
            raise ProtocolError(
                ErrorCode.TOO_MANY_SESSIONS,
                (
                    f"the server holds {len(live)} live sessions (max_sessions {self.config.max_sessions}); job "
                    f"{job_id!r} was not created. Retry later, or raise server.max_sessions"
                ),
            )
        mine = sum(1 for s in live if s.creator == identity)
        if mine >= self.config.max_sessions_per_peer:
            raise ProtocolError(
                ErrorCode.TOO_MANY_SESSIONS,
                (
                    f"{mine} live sessions were created from this client's address (max_sessions_per_peer "
                    f"{self.config.max_sessions_per_peer}); job {job_id!r} was not created. End some jobs (goodbye), "
                    "wait for their lease to run out, or raise server.max_sessions_per_peer"
                ),
            )

    def check_owner(self, session: Session, req: dict) -> None:
        """Refuse a request of an active job that does not carry the job's credential. The
        message names the job (the client named it) but nothing of its set-up or state."""
        if not session.credential:  # saved before credentials existed: its client id decides
            if req["type"] == "hello_request" or req["client_id"] == session.owner:
                return
        elif security.matches(req.get("credential"), session.credential):
            self.issued.pop(session.job_id, None)  # the client has it: no resend will need it
            return
        raise ProtocolError(
            ErrorCode.JOB_CONFLICT,
            (
                f"job {session.job_id!r} belongs to another trainer (this request does not carry the job's "
                "credential). Use another job id, or continue that job from its trainer's checkpoint "
                "(AutoLRS.load_state_dict with the state it saved)"
            ),
        )

    def check_writable(self, session: Session, req: dict) -> None:
        """Refuse a report or goodbye of a finished job, of another trainer's job, from a client
        whose job was taken over, or older than its client's last applied request."""
        if session.status == FINISHED:
            raise ProtocolError(
                ErrorCode.JOB_FINISHED, f"job {session.job_id!r} has finished; start a new one with hello"
            )
        self.check_owner(session, req)
        if req["client_id"] != session.owner:
            raise ProtocolError(
                ErrorCode.JOB_CONFLICT,
                (
                    f"job {session.job_id!r} was taken over by a later hello with its credential (a trainer "
                    "restarted from its checkpoint); this client no longer drives it"
                ),
            )
        if (
            session.last_seq is not None
            and session.last_client_id == req["client_id"]
            and req["seq"] < session.last_seq
        ):
            raise stale(session, req["seq"])
