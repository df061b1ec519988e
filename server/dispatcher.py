"""Request in, reply out: the protocol semantics of the server, with no sockets.

``Dispatcher.handle(frame) -> frame`` never raises: every failure becomes an error reply, and an
unexpected exception is logged with its traceback and answered with code ``internal`` after
the session is rolled back to where it stood before the request. Every change is saved to
disk before the reply leaves, so an acknowledged request survives a crash.

Job requests (hello/report/goodbye) are idempotent per ``(client_id, seq)``: a resend of the
last applied request gets the cached reply and is not applied twice (lazy-pirate clients resend
after a timeout without knowing whether the first copy arrived).

A job belongs to the trainer that created it: the hello that creates a job gets the job's
credential in its reply (random, see :mod:`autolrs.server.security`; the server keeps only its
SHA-256), and every later hello, report and goodbye of the job must carry it. Without it a
request is refused with ``job_conflict`` and a message that says nothing about the job, and
``status`` lists other jobs in full only to the holder of the admin token.

Thread-safe: requests of one job are serialised by a per-job lock, so requests of different
jobs (and ping/status) run at the same time on the transport's worker threads. ``status``
reads each session's tuner summary as cached after its last change, never a tuner in the
middle of a request.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import zlib
from pathlib import Path
from typing import Any, NamedTuple

import autolrs
from autolrs import actions
from autolrs.wire import messages, protocol
from autolrs.wire.protocol import ErrorCode, ProtocolError
from autolrs.errors import ConfigError
from autolrs.tuners import TUNERS, UnknownTunerError

from autolrs.server import security
from autolrs.server.config import ServerConfig, job_tuner_config
from autolrs.server.history import HistoryRecorder
from autolrs.server.keyed_locks import KeyedLocks
from autolrs.server.leases import Leases
from autolrs.server import joblog
from autolrs.server.sessions import ACTIVE, FINISHED, Session, SessionStore, observation_summary

log = logging.getLogger(__name__)

#: A request that takes longer is logged (its time is bounded by the limits on what a request
#: may ask for; this says when one comes near them).
SLOW_REQUEST_S = 1.0
#: A hello's config, tuner name and job facts that break a tuner's constructor in any of these
#: ways are the client's mistake (``bad_config``), not the server's.
_CONFIG_FAILURES = (ConfigError, ValueError, TypeError, ArithmeticError)
#: The largest reply: the knobs' limits keep a plan and the one sent ahead to 10,000 LRs each
#: (about 400 kB together), so a tuner that asks for more than this is broken.
MAX_REPLY_BYTES = 4 << 20


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
        # job id -> the credential its creating hello issued, until the client shows it has it
        # (a resend of that hello gets the same one); never saved, never logged.
        self._issued: dict[str, str] = {}
        self.started = time.monotonic()
        self.leases = Leases(config.lease_s)
        # A session's read-modify-save must not interleave: one request per job at a time.
        self._jobs = KeyedLocks()
        # Counting live sessions and adding one must not interleave (max_sessions).
        self._admission = threading.Lock()
        # job id -> tuner summary after the job's last change (what status lists).
        self._summaries: dict[str, dict | None] = {}
        #: Each job's history for the dashboard (jobs/<id>/history.jsonl; see server/history.py).
        self.history = HistoryRecorder(store.jobs_dir, fsync=store.fsync)

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
                        assert body is not None  # a parsed request without an error has its body
                        reply = (
                            self._hello(req, body, parsed.peer)
                            if kind == "hello"
                            else getattr(self, f"_{kind}")(req, body)
                        )
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
                self._summaries.pop(session.job_id, None)
                self._issued.pop(session.job_id, None)
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
            "summary": self._summary(s),
        }

    def _summary(self, s: Session) -> dict:
        if s.job_id in self._summaries:
            return self._summaries[s.job_id] or {}
        # Not cached yet (loaded from disk): read the tuner only if no request is changing it.
        with self._jobs.try_hold(s.job_id) as taken:
            if not taken:
                return {}
            return self._cache_summary(s) or {}

    def _cache_summary(self, s: Session) -> dict | None:
        try:
            summary = s.tuner.summary()
        except Exception:  # noqa: BLE001 - one broken tuner must not hide the others
            log.exception("summary() failed for job %s", s.job_id)
            summary = None
        self._summaries[s.job_id] = summary
        return summary

    # --- job requests ------------------------------------------------------------------

    def _hello(self, req: dict, body: dict, peer: str | None = None) -> dict:
        hello = _parse(messages.Hello, body)
        job_id, client_id, seq = req["job_id"], req["client_id"], req["seq"]
        session = self.store.get(job_id)
        if session is not None:
            cached = self._duplicate(session, req)
            if cached is not None:
                return cached
            if session.status == ACTIVE:
                self._check_owner(session, req)
                if client_id == session.owner and session.last_seq is not None and seq < session.last_seq:
                    raise _stale(session, seq)
                if hello.tuner != session.tuner_name or hello.config != session.hello_config:
                    # The job's own trainer asks: its config may be shown back to it.
                    raise ProtocolError(
                        ErrorCode.JOB_CONFLICT,
                        (
                            f"job {job_id!r} is active with tuner {session.tuner_name!r} and config "
                            f"{session.hello_config!r}; this hello asks for {hello.tuner!r} with "
                            f"{hello.config!r}. Use another job id, or send goodbye for this one first"
                        ),
                    )
                return self._apply(session, req, lambda s: self._resume(s, req, hello))
            log.info("job %s had finished; a new hello replaces it with a new session", job_id)
        return self._create(req, hello, replaced=session, peer=peer)

    def _create(self, req: dict, hello: messages.Hello, replaced: Session | None, peer: str | None) -> dict:
        job_id = req["job_id"]
        seed = hello.seed if hello.seed is not None else zlib.crc32(job_id.encode("utf-8"))
        try:
            config = job_tuner_config(self.config, hello.tuner, hello.config, dataclasses.asdict(hello))
            tuner = self.store.tuners.make(hello.tuner, config, seed, job=job_id)
            plan, after = _plans(tuner, job_id)
        except UnknownTunerError as exc:
            raise ProtocolError(ErrorCode.UNKNOWN_TUNER, str(exc)) from None
        except _CONFIG_FAILURES as exc:  # a bad knob, or a bad job key (e.g. initial_lr)
            raise ProtocolError(ErrorCode.BAD_CONFIG, str(exc) or type(exc).__name__) from None
        now = time.time()
        identity = _identity(peer)
        self._admit(job_id, now, identity)
        credential = security.new_credential()
        session = Session(
            job_id=job_id,
            tuner_name=hello.tuner,
            config=config,
            hello_config=hello.config,
            seed=seed,
            tuner=tuner,
            owner=req["client_id"],
            credential=security.digest(credential),
            creator=identity,
            lr=_lr_after(plan, hello.initial_lr),
            created=now,
            updated=now,
            step=hello.step,
        )
        # Notices and deprecation notes: said once to the user by the callback, as warnings.
        reply_body = messages.HelloReply(
            plan, resumed=False, seed=seed, notices=tuple(tuner.notices), deprecations=_deprecations(hello), next=after
        )
        # The reply kept for resends (and saved) leaves the credential out; a resend gets it back.
        reply = protocol.ok_reply(req, reply_body.to_body())
        _check_size(reply, job_id)
        self._commit(session, req, reply)
        # Saved before it replaces anything in memory: if the save fails, the store still
        # holds what it held (nothing, or the finished session).
        with self._admission:
            self._admit(job_id, now, identity)  # again, now that no other hello can slip in between
            self.store.save(session)
            self.store.put(session)
        self._issued[job_id] = credential
        self.history.start(job_id)  # a new session: the history of one it replaced goes with it
        self._log(
            session,
            req,
            "hello",
            plan,
            resumed=False,
            replaced_finished=replaced is not None,
            tuner=hello.tuner,
            config=config,
            seed=seed,
        )
        return _with_credential(reply, credential)

    def _admit(self, job_id: str, now: float, identity: str) -> None:
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

    def _resume(self, session: Session, req: dict, hello: messages.Hello) -> tuple[dict | _Issue, dict]:
        if req["client_id"] != session.owner:
            # Another process: a trainer restarted from its checkpoint, at that checkpoint's step,
            # without the slots the earlier plans saved.
            session.tuner.resume(hello.step)
            session.step = hello.step
        plan, after = _plans(session.tuner, session.job_id)
        session.owner = req["client_id"]
        # A job saved before credentials existed gets one now.
        credential = None if session.credential else security.new_credential()
        session.lr = _lr_after(plan, session.lr)
        reply = protocol.ok_reply(
            req,
            messages.HelloReply(
                plan, resumed=True, seed=session.seed, deprecations=_deprecations(hello), next=after
            ).to_body(),
        )
        record = {"kind": "hello", "plan": plan, "resumed": True, "client_step": hello.step}
        return (reply if credential is None else _Issue(reply, credential)), record

    def _report(self, req: dict, body: dict) -> dict:
        session = self._session_for(req)
        cached = self._duplicate(session, req)
        if cached is not None:
            return cached
        self._check_writable(session, req)
        report = _parse(messages.Report, body)
        obs, reported_lr = report.observation, report.lr

        def apply(s: Session) -> tuple[dict, dict]:
            s.tuner.tell(obs)
            plan, after = _plans(s.tuner, s.job_id)
            s.step = obs.step
            s.lr = _lr_after(plan, reported_lr if reported_lr is not None else s.lr)
            return protocol.ok_reply(req, messages.ReportReply(plan, next=after).to_body()), {
                "kind": "report",
                "plan": plan,
                "observation": observation_summary(obs.losses, obs.evals),
            }

        # The history needs the plan the client carried out and the summary from before the report.
        plan_before = (session.last_reply or {}).get("body", {}).get("plan")
        summary_before = (
            self._summaries[session.job_id] if session.job_id in self._summaries else self._cache_summary(session)
        )
        reply = self._apply(session, req, apply)
        self.history.record_report(
            session.job_id,
            plan_before,
            body,
            obs.losses,
            obs.evals,
            obs.hypergrad,
            summary_before,
            self._summaries.get(session.job_id),
        )
        return reply

    def _goodbye(self, req: dict, body: dict) -> dict:
        session = self._session_for(req)
        cached = self._duplicate(session, req)
        if cached is not None:
            return cached
        self._check_writable(session, req)
        goodbye = _parse(messages.Goodbye, body)

        def apply(s: Session) -> tuple[dict, dict]:
            s.status = FINISHED
            if goodbye.step is not None:
                s.step = goodbye.step
            if goodbye.lr is not None:
                s.lr = goodbye.lr
            # The job's final account travels with the reply: the client needs no status.
            reply = messages.GoodbyeReply(summary=self._cache_summary(s)).to_body()
            return protocol.ok_reply(req, reply), {"kind": "goodbye", "plan": None, "reason": goodbye.reason}

        return self._apply(session, req, apply)

    # --- shared steps ------------------------------------------------------------------

    def _session_for(self, req: dict) -> Session:
        session = self.store.get(req["job_id"])
        if session is None:
            raise ProtocolError(ErrorCode.UNKNOWN_JOB, f"no job {req['job_id']!r} on this server; send hello first")
        return session

    def _duplicate(self, session: Session, req: dict) -> dict | None:
        """The cached reply when ``req`` is a resend of the last applied request. The resend of
        the hello that created the job carries no credential (its reply was lost): it gets the
        credential again, a new one if the server restarted meanwhile. Any other resend must
        carry the job's credential."""
        if (req["client_id"], req["seq"]) != (session.last_client_id, session.last_seq):
            return None
        reply = session.last_reply
        if reply is None or reply.get("type") != req["type"][: -len("_request")] + "_reply":
            raise ProtocolError(
                ErrorCode.STALE_SEQ, f"seq {req['seq']} was already used by this client for another request"
            )
        creating = (
            reply["type"] == "hello_reply" and reply.get("status") == "ok" and reply["body"].get("resumed") is False
        )
        if creating and req.get("credential") is None:
            credential = self._issued.get(session.job_id)
            if credential is None:  # issued before a restart: only its digest is left, so a new one
                credential = security.new_credential()
                self._apply(session, req, lambda s: (_Issue(reply, credential), None))
                self._issued[session.job_id] = credential
            return _with_credential(reply, credential)
        self._check_owner(session, req)
        return reply

    def _check_owner(self, session: Session, req: dict) -> None:
        """Refuse a request of an active job that does not carry the job's credential. The
        message names the job (the client named it) but nothing of its set-up or state."""
        if not session.credential:  # saved before credentials existed: its client id decides
            if req["type"] == "hello_request" or req["client_id"] == session.owner:
                return
        elif security.matches(req.get("credential"), session.credential):
            self._issued.pop(session.job_id, None)  # the client has it: no resend will need it
            return
        raise ProtocolError(
            ErrorCode.JOB_CONFLICT,
            (
                f"job {session.job_id!r} belongs to another trainer (this request does not carry the job's "
                "credential). Use another job id, or continue that job from its trainer's checkpoint "
                "(AutoLRS.load_state_dict with the state it saved)"
            ),
        )

    def _check_writable(self, session: Session, req: dict) -> None:
        if session.status == FINISHED:
            raise ProtocolError(
                ErrorCode.JOB_FINISHED, f"job {session.job_id!r} has finished; start a new one with hello"
            )
        self._check_owner(session, req)
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
            raise _stale(session, req["seq"])

    def _apply(self, session: Session, req: dict, change) -> dict:
        """Run ``change(session) -> (reply, log record)``, save, log; roll back on any failure.
        A reply wrapped in ``_Issue`` gives the job a new credential: saved as its digest, sent
        in the reply, kept out of the cached copy. A record of None logs nothing."""
        snap = session.snapshot()
        try:
            reply, record = change(session)
            credential = None
            if isinstance(reply, _Issue):
                reply, credential = reply
                session.credential = security.digest(credential)
            _check_size(reply, session.job_id)
            self._commit(session, req, reply)
            self.store.save(session)
        except Exception:
            # Rebuild from the snapshot rather than trusting load_state_dict on a half-told
            # tuner: derived state outside state_dict() could otherwise survive.
            self.store.put(Session.from_snapshot(snap, self.store.tuners.make))
            raise
        if record is not None:
            kind = record.pop("kind")
            self._log(session, req, kind, record.pop("plan"), **record)
        return reply if credential is None else _with_credential(reply, credential)

    @staticmethod
    def _commit(session: Session, req: dict, reply: dict) -> None:
        session.last_client_id, session.last_seq, session.last_reply = req["client_id"], req["seq"], reply
        session.requests += 1
        session.updated = time.time()

    def _log(self, session: Session, req: dict, kind: str, plan: list | None, **extra: Any) -> None:
        summary = self._cache_summary(session)
        record = {
            "time": round(time.time(), 6),
            "seq": req["seq"],
            "client_id": req["client_id"],
            "kind": kind,
            "step": session.step,
            **extra,
            "plan": plan,
            "summary": summary,
        }
        try:
            self.store.append_log(session, record)
        except Exception:  # noqa: BLE001 - the log is for people; the decision is already saved
            log.exception("could not append to the decisions log of job %s", session.job_id)
        log.info("%s", joblog.job_line(kind, session.job_id, session.step, plan, extra))


# --- helpers -------------------------------------------------------------------------------


def _parse(kind: Any, body: dict) -> Any:
    """The request body as its :mod:`autolrs.wire.messages` class; ``bad_request`` if it is not one."""
    try:
        return kind.from_body(body)
    except messages.BodyError as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"bad {kind.KIND} body: {exc}") from None


def _deprecations(hello: messages.Hello) -> tuple[str, ...]:
    """Notes on the old knob names the hello's config used, for the client to show."""
    cls = TUNERS.get(hello.tuner)
    return () if cls is None else tuple(cls.canonical_config(hello.config)[1])


class _Issue(NamedTuple):
    """A reply that hands out a new credential (see ``Dispatcher._apply``)."""

    reply: dict
    credential: str


def _with_credential(reply: dict, credential: str) -> dict:
    """A copy of a hello reply carrying ``credential`` (the cached reply never holds it)."""
    return {**reply, "body": {**reply["body"], "credential": credential}}


def _plans(tuner: Any, job_id: str) -> tuple[list, list | None]:
    """The tuner's plan (its ``run`` marked when it is a search's) and the plan after it when the
    tuner already knows it (``next``)."""
    plan = tuner.ask()
    _check_plan(plan, job_id)
    if tuner.in_search():
        return actions.mark_search(plan), None
    after = tuner.ask_next()
    if after is not None:
        _check_plan(after, job_id)
    return plan, after


def _lr_after(plan: list, fallback: float | None) -> float | None:
    """What ``status`` shows as the job's LR once the client carried out ``plan``."""
    lr = actions.starting_lr(plan)
    return fallback if lr is None else lr


def _identity(peer: str | None) -> str:
    """Who a session quota counts a new job against: the peer's address ("local" without one)."""
    return peer or "local"


def _check_size(reply: dict, job_id: str) -> None:
    """A reply above MAX_REPLY_BYTES is a tuner's bug: answered as internal and rolled back."""
    size = len(protocol.dumps(reply))
    if size > MAX_REPLY_BYTES:
        raise RuntimeError(f"the reply to job {job_id!r} would be {size} bytes, above {MAX_REPLY_BYTES}")


def _check_plan(plan: Any, job_id: str) -> None:
    try:
        actions.validate_plan(plan)
    except ValueError as exc:
        # A tuner bug, not the client's fault: answered as internal and rolled back.
        raise RuntimeError(f"tuner of job {job_id!r} produced an invalid plan: {exc}") from exc


def _stale(session: Session, seq: int) -> ProtocolError:
    return ProtocolError(
        ErrorCode.STALE_SEQ, f"seq {seq} is older than the last applied seq {session.last_seq} of this client"
    )


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
