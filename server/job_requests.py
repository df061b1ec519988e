"""A job's requests (hello, report, goodbye) applied to its session, for the dispatcher
(:mod:`autolrs.server.dispatcher`), which holds the job's lock while one runs.

They are idempotent per ``(client_id, seq)``: a resend of the last applied request gets the
cached reply and is not applied twice (lazy-pirate clients resend after a timeout without
knowing whether the first copy arrived). Each change is saved to disk before the reply leaves,
so an acknowledged request survives a crash, and a change that fails is rolled back to the
session as it stood before the request. Who may send them: :mod:`autolrs.server.ownership`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import zlib
from typing import Any

from autolrs.errors import ConfigError
from autolrs.tuners import UnknownTunerError
from autolrs.wire import messages, protocol
from autolrs.wire.protocol import ErrorCode, ProtocolError

from autolrs.server import joblog, security
from autolrs.server.config import ServerConfig, job_tuner_config
from autolrs.server.history import HistoryRecorder
from autolrs.server.ownership import Issue, JobOwnership, peer_identity, stale, with_credential
from autolrs.server.replies import check_size, deprecations, lr_after, parse_body, tuner_plans
from autolrs.server.sessions import ACTIVE, FINISHED, Session, SessionStore, observation_summary
from autolrs.server.summaries import SummaryCache

# The dispatcher's log: one logger name for every request's lines, as the server log shows them.
log = logging.getLogger("autolrs.server.dispatcher")

__all__ = ["JobRequests"]

#: A hello's config, tuner name and job facts that break a tuner's constructor in any of these
#: ways are the client's mistake (``bad_config``), not the server's.
CONFIG_FAILURES = (ConfigError, ValueError, TypeError, ArithmeticError)


class JobRequests:
    """hello, report and goodbye of the jobs of ``store`` (see the module doc)."""

    def __init__(
        self,
        config: ServerConfig,
        store: SessionStore,
        ownership: JobOwnership,
        summaries: SummaryCache,
        history: HistoryRecorder,
    ):
        self.config = config
        self.store = store
        self.ownership = ownership
        self.summaries = summaries
        self.history = history

    def hello(self, req: dict, body: dict, peer: str | None = None) -> dict:
        hello = parse_body(messages.Hello, body)
        job_id, client_id, seq = req["job_id"], req["client_id"], req["seq"]
        session = self.store.get(job_id)
        if session is not None:
            cached = self._duplicate(session, req)
            if cached is not None:
                return cached
            if session.status == ACTIVE:
                self.ownership.check_owner(session, req)
                if client_id == session.owner and session.last_seq is not None and seq < session.last_seq:
                    raise stale(session, seq)
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
            plan, after = tuner_plans(tuner, job_id)
        except UnknownTunerError as exc:
            raise ProtocolError(ErrorCode.UNKNOWN_TUNER, str(exc)) from None
        except CONFIG_FAILURES as exc:  # a bad knob, or a bad job key (e.g. initial_lr)
            raise ProtocolError(ErrorCode.BAD_CONFIG, str(exc) or type(exc).__name__) from None
        now = time.time()
        identity = peer_identity(peer)
        self.ownership.admit(job_id, now, identity)
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
            lr=lr_after(plan, hello.initial_lr),
            created=now,
            updated=now,
            step=hello.step,
        )
        # Notices and deprecation notes: said once to the user by the callback, as warnings.
        reply_body = messages.HelloReply(
            plan, resumed=False, seed=seed, notices=tuple(tuner.notices), deprecations=deprecations(hello), next=after
        )
        # The reply kept for resends (and saved) leaves the credential out; a resend gets it back.
        reply = protocol.ok_reply(req, reply_body.to_body())
        check_size(reply, job_id)
        self._commit(session, req, reply)
        # Saved before it replaces anything in memory: if the save fails, the store still
        # holds what it held (nothing, or the finished session).
        with self.ownership.admission:
            self.ownership.admit(job_id, now, identity)  # again, now that no other hello can slip in between
            self.store.save(session)
            self.store.put(session)
        self.ownership.issued[job_id] = credential
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
        return with_credential(reply, credential)

    def _resume(self, session: Session, req: dict, hello: messages.Hello) -> tuple[dict | Issue, dict]:
        if req["client_id"] != session.owner:
            # Another process: a trainer restarted from its checkpoint, at that checkpoint's step,
            # without the slots the earlier plans saved.
            session.tuner.resume(hello.step)
            session.step = hello.step
        plan, after = tuner_plans(session.tuner, session.job_id)
        session.owner = req["client_id"]
        # A job saved before credentials existed gets one now.
        credential = None if session.credential else security.new_credential()
        session.lr = lr_after(plan, session.lr)
        reply = protocol.ok_reply(
            req,
            messages.HelloReply(
                plan, resumed=True, seed=session.seed, deprecations=deprecations(hello), next=after
            ).to_body(),
        )
        record = {"kind": "hello", "plan": plan, "resumed": True, "client_step": hello.step}
        return (reply if credential is None else Issue(reply, credential)), record

    def report(self, req: dict, body: dict) -> dict:
        session = self._session_for(req)
        cached = self._duplicate(session, req)
        if cached is not None:
            return cached
        self.ownership.check_writable(session, req)
        report = parse_body(messages.Report, body)
        obs, reported_lr = report.observation, report.lr

        def apply(s: Session) -> tuple[dict, dict]:
            s.tuner.tell(obs)
            plan, after = tuner_plans(s.tuner, s.job_id)
            s.step = obs.step
            s.lr = lr_after(plan, reported_lr if reported_lr is not None else s.lr)
            return protocol.ok_reply(req, messages.ReportReply(plan, next=after).to_body()), {
                "kind": "report",
                "plan": plan,
                "observation": observation_summary(obs.losses, obs.evals),
            }

        # The history needs the plan the client carried out and the summary from before the report.
        plan_before = (session.last_reply or {}).get("body", {}).get("plan")
        summary_before = self.summaries.current(session)
        reply = self._apply(session, req, apply)
        self.history.record_report(
            session.job_id,
            plan_before,
            body,
            obs.losses,
            obs.evals,
            obs.hypergrad,
            summary_before,
            self.summaries.get(session.job_id),
        )
        return reply

    def goodbye(self, req: dict, body: dict) -> dict:
        session = self._session_for(req)
        cached = self._duplicate(session, req)
        if cached is not None:
            return cached
        self.ownership.check_writable(session, req)
        goodbye = parse_body(messages.Goodbye, body)

        def apply(s: Session) -> tuple[dict, dict]:
            s.status = FINISHED
            if goodbye.step is not None:
                s.step = goodbye.step
            if goodbye.lr is not None:
                s.lr = goodbye.lr
            # The job's final account travels with the reply: the client needs no status.
            reply = messages.GoodbyeReply(summary=self.summaries.refresh(s)).to_body()
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
            credential = self.ownership.issued.get(session.job_id)
            if credential is None:  # issued before a restart: only its digest is left, so a new one
                credential = security.new_credential()
                self._apply(session, req, lambda s: (Issue(reply, credential), None))
                self.ownership.issued[session.job_id] = credential
            return with_credential(reply, credential)
        self.ownership.check_owner(session, req)
        return reply

    def _apply(self, session: Session, req: dict, change) -> dict:
        """Run ``change(session) -> (reply, log record)``, save, log; roll back on any failure.
        A reply wrapped in ``Issue`` gives the job a new credential: saved as its digest, sent
        in the reply, kept out of the cached copy. A record of None logs nothing."""
        snap = session.snapshot()
        try:
            reply, record = change(session)
            credential = None
            if isinstance(reply, Issue):
                reply, credential = reply
                session.credential = security.digest(credential)
            check_size(reply, session.job_id)
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
        return reply if credential is None else with_credential(reply, credential)

    @staticmethod
    def _commit(session: Session, req: dict, reply: dict) -> None:
        session.last_client_id, session.last_seq, session.last_reply = req["client_id"], req["seq"], reply
        session.requests += 1
        session.updated = time.time()

    def _log(self, session: Session, req: dict, kind: str, plan: list | None, **extra: Any) -> None:
        summary = self.summaries.refresh(session)
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
