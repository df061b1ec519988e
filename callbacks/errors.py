"""Exceptions and warnings of the client side (stdlib only, so importing them loads no torch)."""

from __future__ import annotations

import logging
import sys
import warnings

log = logging.getLogger("autolrs.callbacks")


class AutoLRSError(Exception):
    """Base class of the errors raised by ``autolrs.callbacks``."""


class ServerError(AutoLRSError):
    """The server answered with an error reply; ``code`` is one of ``protocol.ErrorCode``."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ServerUnavailable(AutoLRSError):
    """No reply within the timeout. The request stays pending on the client (it can be resent)."""


class AutoLRSConfigError(AutoLRSError):
    """A set-up that cannot be tuned: the server refused the job's hello (unknown tuner, bad
    config, a job id that belongs to another trainer), or an LR scheduler is attached to the
    optimizer.

    Raised before training starts (by the ``AutoLRS`` constructor, or at the first ``step`` for
    a job id held by another trainer, since a trainer continuing its own job loads its
    credential with ``load_state_dict`` after construction): it is a user error worth stopping
    for, unlike an unreachable server, which the callback survives (fail open).
    """


class AutoLRSWarning(UserWarning):
    """Something went wrong on the tuning side; training goes on at the current LR."""


class ServerUnavailableWarning(AutoLRSWarning):
    """The server did not answer; training goes on at the current LR (emitted once per callback)."""


class AutoLRSDeprecationWarning(AutoLRSWarning, DeprecationWarning):
    """The server accepted a spelling it will drop (e.g. a tuner knob's old name); the message
    names the new one. Shown like any DeprecationWarning: for code run as ``__main__``, in tests."""


class WarnOnce:
    """Issues each warning (by key) once per callback, also logged at INFO, pointed at the
    user's line (the first frame outside ``autolrs.callbacks``). ``leader=False`` (a DDP rank
    other than 0, which sees the same events) only logs."""

    def __init__(self, leader: bool = True):
        self.leader = leader
        self._seen: set[str] = set()

    def __call__(self, key: str, message: str, category: type[Warning] = AutoLRSWarning) -> None:
        if key in self._seen:
            return
        self._seen.add(key)
        log.info("%s", message)
        if not self.leader:
            return
        frame, level = sys._getframe(0), 1
        while frame is not None and frame.f_globals.get("__name__", "").startswith("autolrs.callbacks"):
            frame, level = frame.f_back, level + 1
        warnings.warn(message, category, stacklevel=level)
