"""The body of every request and reply of protocol v1, defined once for both sides.

The envelope (:mod:`autolrs.wire.protocol`) carries ``body``; this module says what is in it.
Each body is a small frozen dataclass: the sender builds it and calls ``to_body()``, the
receiver calls ``from_body(body)``, which checks every field it knows
(:mod:`autolrs.wire.fields`) and raises :class:`BodyError` naming the first bad one. As in Jupyter's messaging, unknown fields are
ignored (a newer peer may send more) and missing optional ones take their defaults; optional
fields are left out of ``to_body()`` at their default where older peers never sent them, so
the frames stay those of the golden files.

=========  =======================  ============================================================
kind       request body             reply body
=========  =======================  ============================================================
hello      :class:`Hello`           :class:`HelloReply`: the first plan, whether the job resumed
report     :class:`Report`          :class:`ReportReply`: the next plan
goodbye    :class:`Goodbye`         :class:`GoodbyeReply`: the job's summary from its tuner
status     :class:`Status` (empty)  :class:`StatusReply`: the server and every job's row
ping       :class:`Ping` (empty)    :class:`PingReply`: protocol and server version
=========  =======================  ============================================================

``REQUESTS`` and ``REPLIES`` map each kind to its classes. Plans are lists of actions
(:mod:`autolrs.actions`, the tuners' vocabulary); a report's measurements are an
:class:`~autolrs.actions.Observation`, the form a tuner is told them in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from autolrs.actions import Observation
from autolrs.wire.fields import (
    BodyError,
    bool_field,
    dict_field,
    int_field,
    is_int,
    is_number,
    next_plan_field,
    plan_field,
    strings_field,
)

__all__ = [
    "BodyError",
    "Goodbye",
    "GoodbyeReply",
    "Hello",
    "HelloReply",
    "Ping",
    "PingReply",
    "REPLIES",
    "REQUESTS",
    "Report",
    "ReportReply",
    "Status",
    "StatusReply",
]


# --- hello ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    """A job starts (or a client takes it over): which tuner with which knobs, and the facts
    of the job the server adds to them (``initial_lr``: param group 0's LR; ``max_steps``: the
    step budget if known; whether the client can evaluate and probe). ``step`` is where the
    client stands (0 for a new job); ``seed`` None lets the server derive one from the job id."""

    KIND: ClassVar[str] = "hello"

    tuner: str
    config: dict = field(default_factory=dict)
    initial_lr: float | None = None
    param_groups: int = 1
    step: int = 0
    max_steps: int | None = None
    has_val_fn: bool = False
    has_probe_fn: bool = False
    seed: int | None = None

    def to_body(self) -> dict:
        body = {
            "tuner": self.tuner,
            "config": self.config,
            "initial_lr": self.initial_lr,
            "param_groups": self.param_groups,
            "step": self.step,
            "max_steps": self.max_steps,
            "has_val_fn": self.has_val_fn,
            "seed": self.seed,
        }
        if self.has_probe_fn:  # only then: other hellos stay as older clients sent them
            body["has_probe_fn"] = True
        return body

    @classmethod
    def from_body(cls, body: dict) -> "Hello":
        tuner = body.get("tuner")
        if not isinstance(tuner, str) or not tuner:
            raise BodyError("'tuner' must be a non-empty string")
        config = dict_field(body, "config")
        initial_lr = body.get("initial_lr")
        if initial_lr is not None and not is_number(initial_lr):
            raise BodyError("'initial_lr' must be a number or null")
        max_steps = body.get("max_steps")
        if max_steps is not None and not is_int(max_steps):
            raise BodyError("'max_steps' must be an integer or null")
        seed = body.get("seed")
        if seed is not None and (not is_int(seed) or not 0 <= seed < 2**63):
            raise BodyError("'seed' must be an integer in [0, 2**63) or null")
        return cls(
            tuner=tuner,
            config={} if config is None else config,
            initial_lr=initial_lr,
            param_groups=int_field(body, "param_groups", 1, minimum=1),
            step=int_field(body, "step", 0),
            max_steps=max_steps,
            has_val_fn=bool_field(body, "has_val_fn", False),
            has_probe_fn=bool_field(body, "has_probe_fn", False),
            seed=seed,
        )


@dataclass(frozen=True)
class HelloReply:
    """The job's first plan; ``resumed``: the server already held this job and carries on with
    it; ``seed``: the seed its tuner uses. ``credential``: the job's credential, in the reply
    that created the job only: every later hello, report and goodbye of the job must carry it
    (the envelope's ``credential``). ``notices``: the tuner's advice about the job's set-up
    (e.g. a missing ``max_steps``); ``deprecations``: notes on knob names the tuner still
    accepts but will drop. The callback shows each once, as a warning (a deprecation warning
    for the second kind). ``next``: the plan that follows this one whatever the report says
    (see :class:`ReportReply`). The last four are left out when empty."""

    plan: list
    resumed: bool = False
    seed: int | None = None
    credential: str | None = None
    notices: tuple[str, ...] = ()
    deprecations: tuple[str, ...] = ()
    next: list | None = None

    def to_body(self) -> dict:
        body = {"plan": self.plan, "resumed": self.resumed, "seed": self.seed}
        if self.credential is not None:
            body["credential"] = self.credential
        if self.notices:
            body["notices"] = list(self.notices)
        if self.deprecations:
            body["deprecations"] = list(self.deprecations)
        if self.next is not None:
            body["next"] = self.next
        return body

    @classmethod
    def from_body(cls, body: dict) -> "HelloReply":
        seed = body.get("seed")
        if seed is not None and not is_int(seed):
            raise BodyError("'seed' must be an integer or null")
        credential = body.get("credential")
        if credential is not None and (not isinstance(credential, str) or not credential):
            raise BodyError("'credential' must be a non-empty string or null")
        return cls(
            plan=plan_field(body),
            resumed=bool_field(body, "resumed", False),
            seed=seed,
            credential=credential,
            notices=strings_field(body, "notices"),
            deprecations=strings_field(body, "deprecations"),
            next=next_plan_field(body),
        )


# --- report --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Report:
    """The end of a ``run``: what the client measured (``observation``: global step, steps in
    the segment, losses, evaluations, probes, hypergradients; see
    :class:`~autolrs.actions.Observation` for the fields and their checks) and the base LR it
    trained the last step at (``lr``, for the decision log; None when unknown)."""

    KIND: ClassVar[str] = "report"

    observation: Observation
    lr: float | None = None

    def to_body(self) -> dict:
        body = self.observation.to_body()
        if self.lr is not None:
            body["lr"] = self.lr
        return body

    @classmethod
    def from_body(cls, body: dict) -> "Report":
        try:
            observation = Observation.from_body(body)
        except ValueError as exc:
            raise BodyError(str(exc)) from None
        lr = body.get("lr")
        if lr is not None and not is_number(lr):
            raise BodyError("'lr' must be a number or null")
        return cls(observation=observation, lr=None if lr is None else float(lr))


@dataclass(frozen=True)
class ReportReply:
    """The next plan. ``next`` (optional): the plan after it when the tuner knows it already,
    whatever the coming report says (a schedule's next chunk); a client whose report at the end
    of ``plan``'s run gets no answer in time carries it out meanwhile, so it stays on plan
    through an outage shorter than that plan. Left out when the tuner cannot tell."""

    plan: list
    next: list | None = None

    def to_body(self) -> dict:
        body: dict = {"plan": self.plan}
        if self.next is not None:
            body["next"] = self.next
        return body

    @classmethod
    def from_body(cls, body: dict) -> "ReportReply":
        return cls(plan=plan_field(body), next=next_plan_field(body))


# --- goodbye -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Goodbye:
    """The client is done with the job (``reason``: ``done`` or ``error``, or free text) at
    global step ``step`` (None: unknown), its base LR then being ``lr`` (optional). The job is
    then finished on the server."""

    KIND: ClassVar[str] = "goodbye"

    step: int | None = None
    reason: str = ""
    lr: float | None = None

    def to_body(self) -> dict:
        body: dict[str, Any] = {"step": self.step, "reason": self.reason}
        if self.lr is not None:
            body["lr"] = self.lr
        return body

    @classmethod
    def from_body(cls, body: dict) -> "Goodbye":
        reason = body.get("reason", "")
        if not isinstance(reason, str):
            raise BodyError("'reason' must be a string")
        lr = body.get("lr")
        if lr is not None and not is_number(lr):
            raise BodyError("'lr' must be a number or null")
        return cls(
            step=int_field(body, "step", None, nullable=True), reason=reason, lr=None if lr is None else float(lr)
        )


@dataclass(frozen=True)
class GoodbyeReply:
    """The job's final account from its tuner (its ``summary()``: e.g. a range test's curve
    and suggestions, a ``loss_diff`` tune's statistics, AutoLRS's stages), so a client needs
    no server-wide ``status`` to learn how its own job ended. None when the tuner has none."""

    summary: dict | None = None

    def to_body(self) -> dict:
        return {"summary": self.summary}

    @classmethod
    def from_body(cls, body: dict) -> "GoodbyeReply":
        return cls(summary=dict_field(body, "summary"))


# --- status and ping -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Status:
    """The server and the jobs it holds (an operator's view; a job reads its own summary from
    the goodbye reply). Empty body; the envelope's ``credential`` may carry the server's admin
    token, which shows every job in full."""

    KIND: ClassVar[str] = "status"

    def to_body(self) -> dict:
        return {}

    @classmethod
    def from_body(cls, body: dict) -> "Status":
        return cls()


@dataclass(frozen=True)
class StatusReply:
    """``server``: ``version``, ``protocol``, ``uptime_s``, ``sessions`` (how many), ``admin``
    (whether the request carried the admin token). ``sessions``: one row per job, sorted by job
    id. For the admin: ``job_id``, ``tuner``, ``status`` (``active``, ``finished`` or
    ``expired``), ``step``, ``lr`` (the base LR its trainer trains at as of its last exchange),
    ``created``, ``updated`` (Unix times), ``requests``, ``summary`` (its tuner's). For anyone
    else the minimal row: ``job_id`` and ``status``."""

    server: dict
    sessions: list

    def to_body(self) -> dict:
        return {"server": self.server, "sessions": self.sessions}

    @classmethod
    def from_body(cls, body: dict) -> "StatusReply":
        server = dict_field(body, "server", nullable=False)
        assert server is not None  # nullable=False raised otherwise
        sessions = body.get("sessions")
        if not isinstance(sessions, list) or not all(isinstance(s, dict) for s in sessions):
            raise BodyError("'sessions' must be a list of objects")
        return cls(server=server, sessions=sessions)


@dataclass(frozen=True)
class Ping:
    """Is the server up, and which protocol does it speak? Empty body."""

    KIND: ClassVar[str] = "ping"

    def to_body(self) -> dict:
        return {}

    @classmethod
    def from_body(cls, body: dict) -> "Ping":
        return cls()


@dataclass(frozen=True)
class PingReply:
    """``protocol``: the server's PROTOCOL_VERSION; ``version``: its autolrs version."""

    protocol: int
    version: str

    def to_body(self) -> dict:
        return {"protocol": self.protocol, "version": self.version}

    @classmethod
    def from_body(cls, body: dict) -> "PingReply":
        protocol, version = body.get("protocol"), body.get("version")
        if not is_int(protocol):
            raise BodyError("'protocol' must be an integer")
        if not isinstance(version, str):
            raise BodyError("'version' must be a string")
        return cls(protocol=protocol, version=version)


#: Request kind -> its body class, and the body class of its reply.
REQUESTS: dict[str, Any] = {cls.KIND: cls for cls in (Hello, Report, Goodbye, Status, Ping)}
REPLIES: dict[str, Any] = {
    "hello": HelloReply,
    "report": ReportReply,
    "goodbye": GoodbyeReply,
    "status": StatusReply,
    "ping": PingReply,
}
