"""A scripted ZeroMQ peer that stands in for the server: it speaks the protocol
(:mod:`autolrs.wire.protocol`) on a ROUTER socket bound to 127.0.0.1 on a random port, in a
daemon thread, and answers each request with whatever a handler returns (``None`` drops the
request unanswered). For unit tests of the client side and for benchmarks of ``AutoLRS.step``;
the real server is tested with a real server process.
"""

from __future__ import annotations

import copy
import socket
import threading
import time
from typing import Any, Callable

import zmq

from autolrs import actions
from autolrs.wire import messages, protocol

__all__ = ["ScriptedPeer", "ScriptedTuner", "free_port", "kind_of"]

TIMEOUT_S = 5.0


def free_port() -> int:
    """A TCP port nobody listens on (bound then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kind_of(req: dict) -> str:
    return req["type"][: -len("_request")]


class ScriptedPeer:
    """A ROUTER socket in a thread answering with ``handler(request) -> reply | bytes | None``.

    ``silent = True`` drops every request (a server that stopped answering). Every decoded
    request is appended to ``received`` (dropped ones too), with the time it arrived.
    """

    def __init__(self, handler: Callable[[dict], object], port: int | None = None):
        self.handler = handler
        self.silent = False
        self.received: list[dict] = []
        self.times: list[float] = []
        self._ctx: zmq.Context = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        if port is None:
            self.port = self._sock.bind_to_random_port("tcp://127.0.0.1")
        else:
            self._sock.bind(f"tcp://127.0.0.1:{port}")
            self.port = port
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self._stop = threading.Event()
        self.errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._loop, name="scripted-peer", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                if not poller.poll(20):
                    continue
                frames = self._sock.recv_multipart(zmq.NOBLOCK)
                req = protocol.loads(frames[-1])
                self.received.append(req)
                self.times.append(time.monotonic())
                if self.silent:
                    continue
                reply = self.handler(req)
                if reply is None:
                    continue
                payload = reply if isinstance(reply, bytes) else protocol.dumps(reply)
                self._sock.send_multipart(frames[:-1] + [payload])
        except BaseException as exc:  # surfaced by close()
            self.errors.append(exc)
        finally:
            self._sock.close(0)

    def requests(self, kind: str | None = None) -> list[dict]:
        return [r for r in self.received if kind is None or kind_of(r) == kind]

    def wait_for(self, n: int, kind: str | None = None, timeout: float = TIMEOUT_S) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.requests(kind)) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"peer got {len(self.requests(kind))} {kind or ''} requests, expected {n}")
            time.sleep(0.005)
        return self.requests(kind)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT_S)
        assert not self._thread.is_alive(), "scripted peer thread did not stop"
        if self.errors:
            raise self.errors[0]


class ScriptedTuner:
    """A handler that answers hello and report with the next plan of a script.

    A plan may be a list of actions or a callable ``(request) -> list``. When the script runs
    out it answers ``stop``. A resend of the last request (same client_id and seq) gets the
    cached reply, as the real server does, so it does not use up a plan. ``errors`` maps a
    request number (0-based over hello/report) to an error code to answer instead. A goodbye
    is answered with ``summary`` (the job's summary, as the server's goodbye reply carries it).
    """

    def __init__(self, plans, errors: dict[int, str] | None = None, summary: dict | None = None):
        self.plans = list(plans)
        self.errors = dict(errors or {})
        self.summary = summary
        self.applied: list[dict] = []  # hello/report requests that consumed a plan or error
        self.goodbyes: list[dict] = []
        self._last_key: Any = None
        self._last_reply: Any = None

    def __call__(self, req: dict):
        key = (req.get("client_id"), req.get("seq"))
        if key == self._last_key:
            return self._last_reply
        kind = kind_of(req)
        if kind in ("hello", "report"):
            n = len(self.applied)
            self.applied.append(req)
            if n in self.errors:
                reply = protocol.error_reply(req, self.errors[n], f"scripted {self.errors[n]}")
            else:
                plan = self.plans.pop(0) if self.plans else [actions.stop("script done")]
                if callable(plan):
                    plan = plan(req)
                # Not through HelloReply/ReportReply: a script may send an invalid plan on purpose.
                reply = protocol.ok_reply(req, {"plan": copy.deepcopy(plan)})
        elif kind == "goodbye":
            self.goodbyes.append(req)
            reply = protocol.ok_reply(req, messages.GoodbyeReply(copy.deepcopy(self.summary)).to_body())
        else:
            reply = protocol.ok_reply(req, messages.PingReply(protocol.PROTOCOL_VERSION, "scripted").to_body())
        self._last_key, self._last_reply = key, reply
        return reply

    def reports(self) -> list[dict]:
        return [r["body"] for r in self.applied if kind_of(r) == "report"]
