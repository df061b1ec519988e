"""Request in, reply out: the protocol semantics of the server, with no sockets.

``Dispatcher.handle(frame) -> frame`` never raises: every failure becomes an error reply, and an
unexpected exception is logged with its traceback and answered with code ``internal`` after
the session is rolled back to where it stood before the request. Every change is saved to
disk before the reply leaves, so an acknowledged request survives a crash.

Job requests (hello/report/goodbye) are idempotent per ``(client_id, seq)``: a resend of the
last applied request gets the cached reply and is not applied twice (lazy-pirate clients resend
after a timeout without knowing whether the first copy arrived).
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from typing import Any

import autolrs
from autolrs import actions, protocol
from autolrs.actions import Observation
from autolrs.protocol import ErrorCode, ProtocolError
from autolrs.tuners import ConfigError, UnknownTunerError, make_tuner

from autolrs.server.config import ServerConfig, job_tuner_config
from autolrs.server.sessions import ACTIVE, FINISHED, Session, SessionStore, observation_summary

log = logging.getLogger(__name__)


class Dispatcher:
    def __init__(self, config: ServerConfig, store: SessionStore):
        self.config = config
        self.store = store
        self.started = time.monotonic()
        # One request at a time: a session's read-modify-save must not interleave.
        self._lock = threading.Lock()

    # --- entry point -------------------------------------------------------------------

    def handle(self, frame: bytes) -> bytes:
        """Answer one request frame with one reply frame. Never raises."""
        req: Any = None
        try:
            with self._lock:
                if len(frame) > self.config.max_message_bytes:
                    raise ProtocolError(ErrorCode.TOO_LARGE, f"message of {len(frame)} bytes exceeds the "
                                        f"server's limit of {self.config.max_message_bytes}")
                req = protocol.loads(frame)
                kind, body = protocol.validate_request(req)
                reply = getattr(self, f"_{kind}")(req, body)
        except ProtocolError as exc:
            reply = protocol.error_reply(req, exc.code, exc.message)
        except Exception:  # noqa: BLE001 - the transport must keep serving
            log.exception("internal error while handling a %s", _describe(req))
            reply = protocol.error_reply(req, ErrorCode.INTERNAL, "internal server error; see the server log")
        return _encode(reply, req)

    # --- stateless requests ------------------------------------------------------------

    def _ping(self, req: dict, body: dict) -> dict:
        return protocol.ok_reply(req, {"protocol": protocol.PROTOCOL_VERSION, "version": autolrs.__version__})

    def _status(self, req: dict, body: dict) -> dict:
        sessions = []
        for s in self.store:
            try:
                summary = s.tuner.summary()
            except Exception:  # noqa: BLE001 - one broken tuner must not hide the others
                log.exception("summary() failed for job %s", s.job_id)
                summary = {}
            sessions.append({"job_id": s.job_id, "tuner": s.tuner_name, "status": s.status, "step": s.step,
                             "lr": summary.get("lr"), "created": s.created, "updated": s.updated,
                             "requests": s.requests, "summary": summary})
        server = {"version": autolrs.__version__, "protocol": protocol.PROTOCOL_VERSION,
                  "uptime_s": round(time.monotonic() - self.started, 3), "sessions": len(sessions)}
        return protocol.ok_reply(req, {"server": server, "sessions": sessions})

    # --- job requests ------------------------------------------------------------------

    def _hello(self, req: dict, body: dict) -> dict:
        hello = _parse_hello(body)
        job_id, client_id, seq = req["job_id"], req["client_id"], req["seq"]
        session = self.store.get(job_id)
        if session is not None:
            cached = self._duplicate(session, req)
            if cached is not None:
                return cached
            if client_id == session.owner and session.last_seq is not None and seq < session.last_seq:
                raise _stale(session, seq)
            if session.status == ACTIVE:
                if hello["tuner"] != session.tuner_name or hello["config"] != session.hello_config:
                    raise ProtocolError(ErrorCode.JOB_CONFLICT, (
                        f"job {job_id!r} is active with tuner {session.tuner_name!r} and config "
                        f"{session.hello_config!r}; this hello asks for {hello['tuner']!r} with "
                        f"{hello['config']!r}. Use another job id, or send goodbye for this one first"))
                return self._apply(session, req, lambda s: self._resume(s, req, hello))
            log.info("job %s had finished; a new hello from client %s replaces it with a new session",
                     job_id, client_id)
        return self._create(req, hello, replaced=session)

    def _create(self, req: dict, hello: dict, replaced: Session | None) -> dict:
        job_id = req["job_id"]
        seed = hello["seed"] if hello["seed"] is not None else zlib.crc32(job_id.encode("utf-8"))
        config = job_tuner_config(self.config, hello["tuner"], hello["config"], hello)
        try:
            tuner = make_tuner(hello["tuner"], config, seed)
            plan = tuner.ask()
        except UnknownTunerError as exc:
            raise ProtocolError(ErrorCode.UNKNOWN_TUNER, str(exc)) from None
        except (ConfigError, ValueError) as exc:  # a bad knob, or a bad job key (e.g. initial_lr)
            raise ProtocolError(ErrorCode.BAD_CONFIG, str(exc)) from None
        _check_plan(plan, job_id)
        now = time.time()
        session = Session(job_id=job_id, tuner_name=hello["tuner"], config=config,
                          hello_config=hello["config"], seed=seed, tuner=tuner, owner=req["client_id"],
                          created=now, updated=now, step=hello["step"])
        reply = protocol.ok_reply(req, {"plan": plan, "resumed": False, "seed": seed})
        self._commit(session, req, reply)
        # Saved before it replaces anything in memory: if the save fails, the store still
        # holds what it held (nothing, or the finished session).
        self.store.save(session)
        self.store.put(session)
        self._log(session, req, "hello", plan, resumed=False, replaced_finished=replaced is not None,
                  tuner=hello["tuner"], config=config, seed=seed)
        return reply

    def _resume(self, session: Session, req: dict, hello: dict) -> tuple[dict, dict]:
        plan = session.tuner.ask()
        _check_plan(plan, session.job_id)
        session.owner = req["client_id"]
        reply = protocol.ok_reply(req, {"plan": plan, "resumed": True, "seed": session.seed})
        return reply, {"kind": "hello", "plan": plan, "resumed": True, "client_step": hello["step"]}

    def _report(self, req: dict, body: dict) -> dict:
        session = self._session_for(req)
        cached = self._duplicate(session, req)
        if cached is not None:
            return cached
        self._check_writable(session, req)
        try:
            obs = Observation.from_body(body)
        except ValueError as exc:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"bad report body: {exc}") from None

        def apply(s: Session) -> tuple[dict, dict]:
            s.tuner.tell(obs)
            plan = s.tuner.ask()
            _check_plan(plan, s.job_id)
            s.step = obs.step
            return protocol.ok_reply(req, {"plan": plan}), {
                "kind": "report", "plan": plan, "observation": observation_summary(obs.losses, obs.evals)}

        return self._apply(session, req, apply)

    def _goodbye(self, req: dict, body: dict) -> dict:
        session = self._session_for(req)
        cached = self._duplicate(session, req)
        if cached is not None:
            return cached
        self._check_writable(session, req)
        step, reason = body.get("step"), body.get("reason", "")
        if step is not None and (not _is_int(step) or step < 0):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "goodbye 'step' must be an integer >= 0")
        if not isinstance(reason, str):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "goodbye 'reason' must be a string")

        def apply(s: Session) -> tuple[dict, dict]:
            s.status = FINISHED
            if step is not None:
                s.step = step
            return protocol.ok_reply(req, {}), {"kind": "goodbye", "plan": None, "reason": reason}

        return self._apply(session, req, apply)

    # --- shared steps ------------------------------------------------------------------

    def _session_for(self, req: dict) -> Session:
        session = self.store.get(req["job_id"])
        if session is None:
            raise ProtocolError(ErrorCode.UNKNOWN_JOB, f"no job {req['job_id']!r} on this server; send hello first")
        return session

    @staticmethod
    def _duplicate(session: Session, req: dict) -> dict | None:
        """The cached reply when ``req`` is a resend of the last applied request."""
        if (req["client_id"], req["seq"]) != (session.last_client_id, session.last_seq):
            return None
        if session.last_reply is None or session.last_reply.get("type") != req["type"][: -len("_request")] + "_reply":
            raise ProtocolError(ErrorCode.STALE_SEQ,
                                f"seq {req['seq']} was already used by this client for another request")
        return session.last_reply

    @staticmethod
    def _check_writable(session: Session, req: dict) -> None:
        if session.status == FINISHED:
            raise ProtocolError(ErrorCode.JOB_FINISHED,
                                f"job {session.job_id!r} has finished; start a new one with hello")
        if req["client_id"] != session.owner:
            raise ProtocolError(ErrorCode.JOB_CONFLICT, (
                f"job {session.job_id!r} is owned by another client (a later hello took it over); "
                "use another job id or send hello to take it back"))
        if session.last_seq is not None and session.last_client_id == req["client_id"] \
                and req["seq"] < session.last_seq:
            raise _stale(session, req["seq"])

    def _apply(self, session: Session, req: dict, change) -> dict:
        """Run ``change(session) -> (reply, log record)``, save, log; roll back on any failure."""
        snap = session.snapshot()
        try:
            reply, record = change(session)
            self._commit(session, req, reply)
            self.store.save(session)
        except Exception:
            # Rebuild from the snapshot rather than trusting load_state_dict on a half-told
            # tuner: derived state outside state_dict() could otherwise survive.
            self.store.put(Session.from_snapshot(snap))
            raise
        kind = record.pop("kind")
        self._log(session, req, kind, record.pop("plan"), **record)
        return reply

    @staticmethod
    def _commit(session: Session, req: dict, reply: dict) -> None:
        session.last_client_id, session.last_seq, session.last_reply = req["client_id"], req["seq"], reply
        session.requests += 1
        session.updated = time.time()

    def _log(self, session: Session, req: dict, kind: str, plan: list | None, **extra: Any) -> None:
        try:
            summary = session.tuner.summary()
        except Exception:  # noqa: BLE001
            log.exception("summary() failed for job %s", session.job_id)
            summary = None
        record = {"time": round(time.time(), 6), "seq": req["seq"], "client_id": req["client_id"], "kind": kind,
                  "step": session.step, **extra, "plan": plan, "summary": summary}
        try:
            self.store.append_log(session, record)
        except Exception:  # noqa: BLE001 - the log is for people; the decision is already saved
            log.exception("could not append to the decisions log of job %s", session.job_id)
        log.debug("job %s %s seq=%s step=%s", session.job_id, kind, req["seq"], session.step)


# --- helpers -------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_hello(body: dict) -> dict:
    """Check the hello body's types; return it with defaults filled in."""
    def bad(msg: str) -> ProtocolError:
        return ProtocolError(ErrorCode.BAD_REQUEST, f"bad hello body: {msg}")

    tuner = body.get("tuner")
    if not isinstance(tuner, str) or not tuner:
        raise bad("'tuner' must be a non-empty string")
    config = body.get("config")
    config = {} if config is None else config
    if not isinstance(config, dict):
        raise bad("'config' must be an object")
    initial_lr = body.get("initial_lr")
    if initial_lr is not None and (not isinstance(initial_lr, (int, float)) or isinstance(initial_lr, bool)):
        raise bad("'initial_lr' must be a number or null")
    param_groups = body.get("param_groups", 1)
    if not _is_int(param_groups) or param_groups < 1:
        raise bad("'param_groups' must be an integer >= 1")
    step = body.get("step", 0)
    if not _is_int(step) or step < 0:
        raise bad("'step' must be an integer >= 0")
    max_steps = body.get("max_steps")
    if max_steps is not None and not _is_int(max_steps):
        raise bad("'max_steps' must be an integer or null")
    has_val_fn = body.get("has_val_fn", False)
    if not isinstance(has_val_fn, bool):
        raise bad("'has_val_fn' must be true or false")
    seed = body.get("seed")
    if seed is not None and (not _is_int(seed) or not 0 <= seed < 2**63):
        raise bad("'seed' must be an integer in [0, 2**63) or null")
    return {"tuner": tuner, "config": config, "initial_lr": initial_lr, "param_groups": param_groups,
            "step": step, "max_steps": max_steps, "has_val_fn": has_val_fn, "seed": seed}


def _check_plan(plan: Any, job_id: str) -> None:
    try:
        actions.validate_plan(plan)
    except ValueError as exc:
        # A tuner bug, not the client's fault: answered as internal and rolled back.
        raise RuntimeError(f"tuner of job {job_id!r} produced an invalid plan: {exc}") from exc


def _stale(session: Session, seq: int) -> ProtocolError:
    return ProtocolError(ErrorCode.STALE_SEQ,
                         f"seq {seq} is older than the last applied seq {session.last_seq} of this client")


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
