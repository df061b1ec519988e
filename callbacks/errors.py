"""Exceptions and warnings of the client side (stdlib only, so importing them loads no torch)."""

from __future__ import annotations


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
    """The server refused the job's hello (unknown tuner, bad config, job id in use).

    Raised by the ``AutoLRS`` constructor, before training starts: it is a user error worth
    stopping for, unlike an unreachable server, which the callback survives (fail open).
    """


class AutoLRSWarning(UserWarning):
    """Something went wrong on the tuning side; training goes on at the current LR."""


class ServerUnavailableWarning(AutoLRSWarning):
    """The server did not answer; training goes on at the current LR (emitted once per callback)."""
