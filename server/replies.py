"""What the reply to a job's request is built from: the request's body as its message class,
the tuner's plans (checked, a search's marked) and the plan after it, the LR ``status`` shows,
and a bound on the reply's size.
"""

from __future__ import annotations

from typing import Any

from autolrs import actions
from autolrs.tuners import TUNERS
from autolrs.wire import messages, protocol
from autolrs.wire.protocol import ErrorCode, ProtocolError

__all__ = ["MAX_REPLY_BYTES", "check_size", "deprecations", "lr_after", "parse_body", "tuner_plans"]

#: The largest reply: the knobs' limits keep a plan and the one sent ahead to 10,000 LRs each
#: (about 400 kB together), so a tuner that asks for more than this is broken.
MAX_REPLY_BYTES = 4 << 20


def parse_body(kind: Any, body: dict) -> Any:
    """The request body as its :mod:`autolrs.wire.messages` class; ``bad_request`` if it is not one."""
    try:
        return kind.from_body(body)
    except messages.BodyError as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"bad {kind.KIND} body: {exc}") from None


def deprecations(hello: messages.Hello) -> tuple[str, ...]:
    """Notes on the old knob names the hello's config used, for the client to show."""
    cls = TUNERS.get(hello.tuner)
    return () if cls is None else tuple(cls.canonical_config(hello.config)[1])


def tuner_plans(tuner: Any, job_id: str) -> tuple[list, list | None]:
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


def lr_after(plan: list, fallback: float | None) -> float | None:
    """What ``status`` shows as the job's LR once the client carried out ``plan``."""
    lr = actions.starting_lr(plan)
    return fallback if lr is None else lr


def check_size(reply: dict, job_id: str) -> None:
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
