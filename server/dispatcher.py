"""Request in, reply out: the protocol semantics of the server, with no sockets.

``Dispatcher.handle(frame) -> frame`` never raises: every failure becomes an error reply, and an
unexpected exception is logged with its traceback and answered with code ``internal`` after
the session is rolled back to where it stood before the request. Every change is saved to
disk before the reply leaves, so an acknowledged request survives a crash.

Job requests (hello/report/goodbye; :mod:`autolrs.server.job_requests`) are idempotent per
``(client_id, seq)``: a resend of the last applied request gets the cached reply and is not
applied twice. A job belongs to the trainer that created it (its credential, see
:mod:`autolrs.server.ownership`), and ``status`` lists other jobs in full only to the holder of
the admin token.

Thread-safe: requests of one job are serialised by a per-job lock, so requests of different
jobs (and ping/status) run at the same time on the transport's worker threads. ``status``
reads each session's tuner summary as cached after its last change, never a tuner in the
middle of a request.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, NamedTuple

import autolrs
from autolrs.wire import messages, protocol
from autolrs.wire.protocol import ErrorCode, ProtocolError

from autolrs.server import security
from autolrs.server.config import ServerConfig
from autolrs.server.history import HistoryRecorder
from autolrs.server.job_requests import JobRequests
from autolrs.server.keyed_locks import KeyedLocks
from autolrs.server.leases import Leases
from autolrs.server.ownership import JobOwnership
from autolrs.server.sessions import Session, SessionStore
from autolrs.server.summaries import SummaryCache

log = logging.getLogger(__name__)

#: A request that takes longer is logged (its time is bounded by the limits on what a request
#: may ask for; this says when one comes near them).
SLOW_REQUEST_S = 1.0


class Parsed(NamedTuple):
    """A request frame, decoded and validated (``error`` is the encoded reply when it is not).
    ``peer``: who sent it (the address the transport saw; None without a socket)."""

    req: Any
    kind: str | None
    body: dict | None
    error: bytes | None = None
    peer: str | None = None

    @property
    def job_id(self) -> str | None:
        return self.req["job_id"] if self.kind in protocol.JOB_KINDS else None


class Dispatcher:
    """``admin_token``: the token that shows every job in ``status`` (default: the one in
    ``server.admin_token_file``, else ``<state_dir>/admin.token``, made when missing)."""

    def __init__(self, config: ServerConfig, store: SessionStore, admin_token: str | None = None):
        self.config = config
        self.store = store
        if admin_token is None:
            path = (
                Path(config.admin_token_file)
                if config.admin_token_file
                else store.state_dir / security.ADMIN_TOKEN_FILE
            )
            admin_token = security.load_admin_token(path)
        self._admin = security.digest(admin_token)
        self.started = time.monotonic()
        self.leases = Leases(config.lease_s)
        # A session's read-modify-save must not interleave: one request per job at a time.
        self._jobs = KeyedLocks()
        self.summaries = SummaryCache(self._jobs)
        self.ownership = JobOwnership(config, store, self.leases)
        #: Each job's history for the dashboard (jobs/<id>/history.jsonl; see server/history.py).
        self.history = HistoryRecorder(store.jobs_dir, fsync=store.fsync)
        self.jobs = JobRequests(config, store, self.ownership, self.summaries, self.history)

    # --- entry point -------------------------------------------------------------------

    def handle(self, frame: bytes, peer: str | None = None) -> bytes:
        """Answer one request frame with one reply frame. Never raises."""
        return self.respond(self.parse(frame, peer))

    def parse(self, frame: bytes, peer: str | None = None) -> Parsed:
        """Check size, decode and validate a frame. Never raises."""
        req: Any = None
        try:
            if len(frame) > self.config.max_message_bytes:
                raise ProtocolError(
                    ErrorCode.TOO_LARGE,
                    f"message of {len(frame)} bytes exceeds the server's limit of {self.config.max_message_bytes}",
                )
            req = protocol.loads(frame)
            kind, body = protocol.validate_request(req)
            return Parsed(req, kind, body, None, peer)
        except ProtocolError as exc:
            return Parsed(req, None, None, _encode(protocol.error_reply(req, exc.code, exc.message), req))
        except Exception:  # noqa: BLE001 - the transport must keep serving
            log.exception("internal error while decoding a request")
            return Parsed(
                req,
                None,
                None,
                _encode(
                    protocol.error_reply(req, ErrorCode.INTERNAL, "internal server error; see the server log"), req
                ),
            )

    def respond(self, parsed: Parsed) -> bytes:
        """The reply to a parsed request. Never raises."""
        if parsed.error is not None:
            return parsed.error
        req, kind, body = parsed.req, parsed.kind, parsed.body
        started = time.monotonic()
        try:
            job_id = parsed.job_id
            if job_id is None:
                reply = getattr(self, f"_{kind}")(req, body)
            else:
                with self._jobs.hold(job_id):
                    try:
                        assert kind is not None and body is not None  # a request parsed without error has both
                        if kind == "hello":
                            reply = self.jobs.hello(req, body, parsed.peer)
                        else:
                            reply = getattr(self.jobs, kind)(req, body)
                    finally:
                        if job_id in self.store.sessions:  # any request of a job renews its lease
                            self.leases.touch(job_id)
        except ProtocolError as exc:
            reply = protocol.error_reply(req, exc.code, exc.message)
        except Exception:  # noqa: BLE001 - the transport must keep serving
            log.exception("internal error while handling a %s", _describe(req))
            reply = protocol.error_reply(req, ErrorCode.INTERNAL, "internal server error; see the server log")
        elapsed = time.monotonic() - started
        if elapsed > SLOW_REQUEST_S:
            log.warning("a %s took %.1f s", _describe(req), elapsed)
        return _encode(reply, req)

    def reap(self, now: float | None = None) -> list[str]:
        """Unload the sessions idle past their lease (never one with a request in progress);
        returns their job ids. Their state stays on disk and ``status`` still lists them."""
        now = time.time() if now is None else now
        evicted = []
        for session in self.store.listing()[0]:
            if not self.leases.idle(session, now):
                continue
            with self._jobs.try_hold(session.job_id) as taken:
                if not taken or self.store.sessions.get(session.job_id) is not session:
                    continue
                if not self.leases.idle(session, now):  # a request came in meanwhile
                    continue
                self.store.evict(session.job_id, self._row(session, now))
                self.leases.forget(session.job_id)
                self.summaries.forget(session.job_id)
                self.ownership.issued.pop(session.job_id, None)
                evicted.append(session.job_id)
        if evicted:
            log.info(
                "lease of %d job(s) ran out; unloaded from memory (state kept on disk): %s",
                len(evicted),
                ", ".join(evicted[:10]) + (" ..." if len(evicted) > 10 else ""),
            )
        return evicted

    # --- stateless requests ------------------------------------------------------------

    def _ping(self, req: dict, body: dict) -> dict:
        return protocol.ok_reply(req, messages.PingReply(protocol.PROTOCOL_VERSION, autolrs.__version__).to_body())

    def _status(self, req: dict, body: dict) -> dict:
        """Every job in full for the admin token's holder; for anyone else only each job's id and
        status: another job's tuner, step, LR and summary are its trainer's business."""
        admin = security.matches(req.get("credential"), self._admin)
        sessions = self.rows()
        if not admin:
            sessions = [{"job_id": row["job_id"], "status": row["status"]} for row in sessions]
        server = {
            "version": autolrs.__version__,
            "protocol": protocol.PROTOCOL_VERSION,
            "uptime_s": round(time.monotonic() - self.started, 3),
            "sessions": len(sessions),
            "admin": admin,
            "tuner_processes": self.store.tuners.describe(),
        }
        return protocol.ok_reply(req, messages.StatusReply(server, sessions).to_body())

    def rows(self, now: float | None = None, only: str | None = None) -> list[dict]:
        """Every job's status row (loaded or unloaded; or only job ``only``'s), by job id: what
        ``status`` lists and the dashboard shows. Summaries are the cached ones; no job's lock is
        waited for."""
        now = time.time() if now is None else now
        live, evicted = self.store.listing()
        rows = {s.job_id: self._row(s, now) for s in live if only is None or s.job_id == only}
        for job_id, row in evicted.items():
            if only is None or job_id == only:
                rows.setdefault(job_id, row)
        return [rows[job] for job in sorted(rows)]

    def _row(self, s: Session, now: float) -> dict:
        return {
            "job_id": s.job_id,
            "tuner": s.tuner_name,
            "status": self.leases.status(s, now),
            "step": s.step,
            "lr": s.lr,
            "created": s.created,
            "updated": s.updated,
            "requests": s.requests,
            "summary": self.summaries.listed(s),
        }


# --- helpers -------------------------------------------------------------------------------


def _describe(req: Any) -> str:
    if isinstance(req, dict):
        return f"{req.get('type')!r} for job {req.get('job_id')!r} seq {req.get('seq')!r}"
    return "request"


def _encode(reply: dict, req: Any) -> bytes:
    try:
        return protocol.dumps(reply)
    except (TypeError, ValueError):
        # A tuner summary or plan that JSON cannot carry (e.g. a numpy integer): still answer.
        log.exception("cannot encode the reply to %s", _describe(req))
        return protocol.dumps(protocol.error_reply(req, ErrorCode.INTERNAL, "reply could not be encoded"))
