"""The callback's line to the server, fail open: every exchange goes through :class:`ServerLink`.

An exchange sends a request and waits at most ``timeout`` s. When no reply comes, training goes
on with one :class:`ServerUnavailableWarning` (what it trains on is the callback's business: the
plan the last reply sent ahead, else the current LR); the request stays pending and later steps
look for its reply without blocking (``poll_reply(0)``), resending it every ``retry_interval`` s.
A request the server failed on (``internal``) is sent again after ``retry_interval``; a server
that lost the job (``unknown_job``) gets a fresh hello; a refusal the user must fix (unknown
tuner, bad config, bad signature) raises :class:`AutoLRSConfigError` at start; any other
refusal, or a reply that is not a valid body, detaches the link: training goes on untuned. With
``require_server`` a refusal or a failure that would detach or defer raises instead.

A job belongs to the trainer that created it: the hello reply that creates it carries the job's
credential, which every later request of the job carries (:attr:`ServerLink.credential`, saved
in the callback's state dict). A hello at construction that finds the job held by another
trainer (``job_conflict``) does not raise at once: a trainer restarting from its checkpoint
builds the callback first and then loads the credential (``load_state_dict``). The refusal is
kept in :attr:`ServerLink.conflict` and the callback raises it at its first step.

States: ``online`` (nothing pending), ``waiting`` (a request is pending), ``deferred`` (a
failed request waits for its retry time), ``stopped`` (the tuner said stop: only goodbye is
left), ``detached`` (the server cannot help this job any more), ``closed``.

Under ``torch.distributed`` only rank 0 has a client: :meth:`ServerLink._server` runs the
exchange there and broadcasts its plain-data outcome, so every rank takes the same decisions
(see :mod:`autolrs.callbacks.distributed`).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from autolrs.callbacks.client import Client
from autolrs.callbacks.errors import (
    AutoLRSConfigError,
    AutoLRSDeprecationWarning,
    ServerError,
    ServerUnavailable,
    ServerUnavailableWarning,
    WarnOnce,
)
from autolrs.callbacks.options import LinkOptions
from autolrs.wire import messages
from autolrs.wire.protocol import ErrorCode

log = logging.getLogger(__name__)

__all__ = ["CONFIG_ERRORS", "ServerLink"]

#: Hello refusals that mean the user asked for something impossible: raised at start.
CONFIG_ERRORS = (ErrorCode.UNKNOWN_TUNER, ErrorCode.BAD_CONFIG, ErrorCode.JOB_CONFLICT, ErrorCode.UNAUTHENTICATED)

ONLINE, WAITING, DEFERRED, STOPPED, DETACHED, CLOSED = "online", "waiting", "deferred", "stopped", "detached", "closed"


class ServerLink:
    """Exchanges of one job with the server (see the module doc). ``hello_body()`` builds the
    hello sent again when the server lost the job; ``lr()`` and ``step()`` are the callback's
    LR and step, for messages."""

    #: Upper bound of the wait for the goodbye reply at close() (unless the caller asks for more).
    GOODBYE_TIMEOUT = 1.0

    def __init__(
        self,
        options: LinkOptions,
        job: str,
        *,
        dist: Any,
        warn: WarnOnce,
        hello_body: Callable[[], dict],
        lr: Callable[[], float],
        step: Callable[[], int],
    ):
        self.options = options
        self.server, self.timeout, self.retry_interval = options.server, options.timeout, options.retry_interval
        self.require_server = options.require_server
        #: Replies with a plan received (a hello's or a report's): none at close means the run
        #: was never tuned.
        self.decisions = 0
        self._dist, self._warn = dist, warn
        self._hello_body, self._lr, self._step = hello_body, lr, step
        self.state = ONLINE
        #: A hello was acknowledged: the server knows this job (a goodbye is due at close).
        self.registered = False
        self._retry_at = 0.0
        self._deferred: tuple[str, dict] | None = None
        self._last_request: tuple[str, dict] | None = None
        self._offline_since: float | None = None
        self._client: Client | None = None
        self.connect(job)

    def connect(self, job: str, credential: str | None = None) -> None:
        """A client for ``job`` (rank 0's under DDP; None on the other ranks), replacing any,
        carrying the job's ``credential`` if known."""
        if self._client is not None:
            self._client.close()
        self.job, self.registered, self.state = job, False, ONLINE
        #: The job's credential (every rank keeps it, so any rank's state dict has it).
        self.credential = credential
        #: The refusal of the hello at construction when the job belongs to another trainer.
        self.conflict: str | None = None
        make = lambda: Client(
            self.server,
            job,
            timeout=self.timeout,
            secret=self.options.secret,  # noqa: E731
            credential=credential,
        )
        self._client = make() if self._dist is None else self._dist.leader_call(make, share=False)

    # --- what the callback asks ----------------------------------------------------------

    @property
    def online(self) -> bool:
        """Whether the last exchange got an answer (nothing is pending)."""
        return self.state in (ONLINE, STOPPED)

    @property
    def pending(self) -> bool:
        """A request waits for its reply or its retry: later steps call :meth:`background`."""
        return self.state in (WAITING, DEFERRED)

    @property
    def client_id(self) -> str | None:
        return None if self._client is None else self._client.client_id

    @property
    def next_seq(self) -> int | None:
        """The sequence number of this client's next request (None off rank 0)."""
        return None if self._client is None else self._client.next_seq

    def exchange(
        self,
        kind: str,
        body: dict,
        *,
        starting: bool = False,
        deadline: float | None = None,
        owner_may_load: bool = False,
    ) -> Any:
        """Send a request and wait for its reply until ``deadline`` (default: ``timeout`` from
        now). Returns the reply (a :class:`~autolrs.wire.messages.HelloReply` or
        :class:`~autolrs.wire.messages.ReportReply`: its ``plan`` to carry out, its ``next``), or
        None (no reply yet, or nothing to do). ``owner_may_load``: a hello at construction,
        whose ``job_conflict`` waits for ``load_state_dict`` (see the module doc)."""
        if deadline is None:
            deadline = time.monotonic() + self.timeout
        self._last_request = (kind, body)
        outcome = self._server("request", kind, body, wait=max(0.0, deadline - time.monotonic()))
        return self._handle(outcome, deadline=deadline, starting=starting, owner_may_load=owner_may_load)

    def background(self) -> Any:
        """A step while a request is pending or deferred: never blocks. The reply that came in
        (as :meth:`exchange` returns it), or None."""
        if self.state == DEFERRED:
            due = time.monotonic() >= self._retry_at
            if self._dist is not None:  # rank 0's clock decides for every rank
                due = self._dist.due(due)
            if not due:
                return None
            kind, body = self._deferred
            self._deferred = None
            self.state = WAITING
            self._server("send", kind, body)
            return None
        outcome = self._server("poll")
        return None if outcome is None else self._handle(outcome, deadline=time.monotonic() + self.timeout)

    def stop(self) -> None:
        """The tuner said stop: nothing more to ask, only goodbye."""
        self.state = STOPPED

    def detach(self, key: str, message: str) -> None:
        """Stop tuning this job, with a warning: training goes on at the current LR. With
        ``require_server``, raise :class:`ServerError` instead."""
        if self.require_server:
            self.state = DETACHED
            reason = message.split("; the callback stops tuning")[0]
            raise ServerError(
                key, f"{reason} (require_server=True: the callback raises instead of training on untuned)"
            )
        self._warn(key, message)
        self.state = DETACHED

    def goodbye(
        self, step: int, reason: str, timeout: float | None = None, lr: float | None = None
    ) -> messages.GoodbyeReply | None:
        """Say goodbye if the server knows the job; its reply (the job's summary) or None. Not
        collective: under DDP rank 0 says goodbye alone, so a rank may close on its own."""
        if not self.registered or self._client is None:
            return None
        wait = min(self.timeout, self.GOODBYE_TIMEOUT) if timeout is None else timeout
        outcome = self._talk("request", "goodbye", messages.Goodbye(step, reason, lr).to_body(), wait=wait)
        self.registered = False
        if outcome is None:
            log.info("autolrs job %s: no reply to goodbye; closing anyway", self.job)
            return None
        if outcome[0] == "error":
            log.info("autolrs job %s: goodbye answered with %s: %s", self.job, outcome[2], outcome[3])
            return None
        try:
            return messages.GoodbyeReply.from_body(outcome[2])
        except messages.BodyError as exc:
            log.info("autolrs job %s: unreadable goodbye reply (%s)", self.job, exc)
            return None

    def close(self) -> None:
        self.state = CLOSED
        if self._client is not None:
            self._client.close()

    # --- server traffic ------------------------------------------------------------------

    def _server(self, op: str, kind: str | None = None, body: dict | None = None, wait: float = 0.0):
        """The one place that talks to the server (see :meth:`_talk`); under DDP, rank 0 talks
        and every rank gets its outcome."""
        if self._dist is not None:
            return self._dist.server(self._talk, op, kind, body, wait)
        return self._talk(op, kind, body, wait)

    def _talk(self, op: str, kind: str | None = None, body: dict | None = None, wait: float = 0.0):
        """One exchange with the server. Returns plain data (broadcastable):

        ``("ok", kind, reply_body)``, ``("error", kind, code, message)``, or None for no reply
        (yet). ``op``: ``"request"`` sends and waits up to ``wait`` s; ``"send"`` starts a
        request without waiting; ``"poll"`` looks for the pending request's reply without
        waiting and resends it when ``retry_interval`` has passed.
        """
        client = self._client
        try:
            if op == "request":
                return ("ok", kind, client.request(kind, body, timeout=wait))
            if op == "send":
                client.send(kind, body)
                self._retry_at = time.monotonic() + self.retry_interval
                return None
            kind = client.pending_kind
            if kind is None:
                return None
            reply = client.poll_reply(0)
            if reply is None:
                now = time.monotonic()
                if now >= self._retry_at:
                    client.resend()
                    self._retry_at = now + self.retry_interval
                return None
            return ("ok", kind, reply)
        except ServerUnavailable:
            return None
        except ServerError as exc:
            return ("error", kind, exc.code, exc.message)

    def _handle(self, outcome: Any, *, deadline: float, starting: bool = False, owner_may_load: bool = False) -> Any:
        if outcome is None:
            if self.state != WAITING:
                self.state = WAITING
                self._offline_since = time.monotonic()
                self._retry_at = time.monotonic() + self.retry_interval
            self._warn(
                "unavailable",
                (
                    f"autolrs: the tuner server at {self.server} did not answer within {self.timeout:g} s "
                    f"(job {self.job}); training continues at the current LR ({self._lr():g}) and the callback "
                    f"keeps retrying every {self.retry_interval:g} s in the background"
                ),
                ServerUnavailableWarning,
            )
            return None
        if self.state == WAITING and self._offline_since is not None:
            log.info(
                "autolrs job %s: the server answered again after %.1f s",
                self.job,
                time.monotonic() - self._offline_since,
            )
        self._offline_since = None
        self.state = ONLINE
        if outcome[0] == "ok":
            return self._reply(outcome[1], outcome[2])
        return self._refused(
            outcome[1], outcome[2], outcome[3], deadline=deadline, starting=starting, owner_may_load=owner_may_load
        )

    def _reply(self, kind: str, body: dict) -> Any:
        if kind == "hello":
            self.registered = True  # acknowledged: the server knows the job, whatever the body
        try:
            reply = messages.REPLIES[kind].from_body(body)
        except messages.BodyError as exc:
            self.detach(
                "plan",
                (
                    f"autolrs: job {self.job} got an invalid {kind} reply from the server ({exc}); the callback stops "
                    f"tuning and training continues at the current LR ({self._lr():g})"
                ),
            )
            return None
        if kind == "hello":
            if reply.resumed:
                log.info("autolrs job %s: the server resumed an existing session", self.job)
            if reply.credential is not None:  # the job is new (or, saved before credentials, now has one)
                self.credential = reply.credential
                if self._client is not None:
                    self._client.credential = reply.credential
            for notice in reply.notices:
                self._warn(f"notice:{notice}", notice)
            for note in reply.deprecations:
                self._warn(f"deprecated:{note}", f"autolrs: {note}", AutoLRSDeprecationWarning)
        self.decisions += 1
        return reply

    def _refused(
        self, kind: str, code: str, message: str, *, deadline: float, starting: bool, owner_may_load: bool = False
    ) -> Any:
        if kind == "hello" and starting and code == ErrorCode.JOB_CONFLICT and owner_may_load:
            # Maybe this is the job's own trainer, restarting: load_state_dict brings the credential.
            self.conflict = (
                f"the server refused job {self.job!r} ({code}): {message}. A trainer that "
                "continues its job calls load_state_dict(state) before its first step"
            )
            self.state = DETACHED
            return None
        if kind == "hello" and starting and code in CONFIG_ERRORS:
            raise AutoLRSConfigError(f"the server refused job {self.job!r} ({code}): {message}")
        if code == ErrorCode.UNKNOWN_JOB and kind == "report":
            # The server lost this job (restarted without its state): start it again from here.
            log.warning(
                "autolrs job %s: the server does not know this job any more; sending a new hello at step %d",
                self.job,
                self._step(),
            )
            self.registered = False
            return self.exchange("hello", self._hello_body(), deadline=deadline)
        if code == ErrorCode.INTERNAL:
            if self.require_server:
                raise ServerError(
                    code,
                    f"the tuner server failed on a {kind} of job {self.job}: {message} "
                    "(require_server=True: not training on)",
                )
            self._warn(
                "internal",
                (
                    f"autolrs: the tuner server failed on a {kind} of job {self.job} ({message}); training "
                    f"continues at the current LR and the request is retried every {self.retry_interval:g} s"
                ),
            )
            self._deferred = self._last_request
            self.state = DEFERRED
            self._retry_at = time.monotonic() + self.retry_interval
            return None
        if code in (ErrorCode.JOB_CONFLICT, ErrorCode.JOB_FINISHED, ErrorCode.UNKNOWN_JOB):
            self.registered = False  # the job is not ours (any more): no goodbye either
        self.detach(
            "refused",
            (
                f"autolrs: the tuner server refused a {kind} of job {self.job} ({code}: {message}); the "
                f"callback stops tuning and training continues at the current LR ({self._lr():g})"
            ),
        )
        return None
