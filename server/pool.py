"""Worker threads that answer requests, so one slow job does not hold up the others' replies.

The transport's socket thread decodes each request and submits it here under a key: the job id
for hello/report/goodbye, a key of its own for anything else (ping, status, errors). Requests
with the same key run one at a time, in arrival order (a job's read-modify-save never
interleaves, and a lazy-pirate resend queued behind its first copy gets the cached reply);
requests with different keys run on different workers. A job with more requests waiting goes
to the back of the line after each one, so a busy job cannot starve the rest.

A ZeroMQ socket belongs to one thread, so workers do not touch the ROUTER socket: each sends
``[routing frames..., reply]`` on its own PUSH socket to an inproc PULL socket that the socket
thread polls next to the ROUTER and forwards from.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections import deque
from typing import Any, Callable, Hashable

import zmq

log = logging.getLogger(__name__)

_ids = itertools.count()


class WorkerPool:
    def __init__(self, context: zmq.Context, answer: Callable[[Any], bytes], workers: int):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.context = context
        self._answer = answer
        #: Bound by the caller's thread (the socket thread reads it); workers connect to it.
        self.endpoint = f"inproc://autolrs-replies-{next(_ids)}"
        self.replies = context.socket(zmq.PULL)
        self.replies.bind(self.endpoint)
        # key -> requests not answered yet; the first is running or its key is in _ready.
        self._pending: dict[Hashable, deque] = {}
        self._guard = threading.Lock()
        #: Bytes of the requests submitted and not answered yet (the transport bounds it).
        self.queued_bytes = 0
        self._ready: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"autolrs-worker-{i}", daemon=True) for i in range(workers)
        ]
        for t in self._threads:
            t.start()

    def submit(self, key: Hashable | None, routing: list[bytes], request: Any, size: int = 0) -> None:
        """Queue ``request`` of ``size`` bytes (answered as ``routing + [reply]`` on
        ``replies``); never blocks."""
        if key is None:
            key = object()  # runs on its own, next to everything else
        with self._guard:
            self.queued_bytes += size
            waiting = self._pending.get(key)
            if waiting is not None:
                waiting.append((routing, request, size))
                return
            self._pending[key] = deque([(routing, request, size)])
        self._ready.put(key)

    def backlog(self) -> int:
        """Requests submitted and not answered yet."""
        with self._guard:
            return sum(len(d) for d in self._pending.values())

    def _work(self) -> None:
        push = self.context.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        push.connect(self.endpoint)
        try:
            while True:
                key = self._ready.get()
                if key is None:
                    return
                with self._guard:
                    waiting = self._pending.get(key)
                    if not waiting:  # dropped by close()
                        continue
                    routing, request, size = waiting[0]
                try:
                    reply = self._answer(request)
                except Exception:  # noqa: BLE001 - answer() never raises; keep the worker alive anyway
                    log.exception("a request could not be answered")
                    reply = None
                if reply is not None:
                    try:
                        push.send_multipart(routing + [reply])
                    except zmq.ZMQError as exc:  # the context is being terminated
                        log.warning("could not hand a reply to the socket thread: %s", exc)
                        return
                with self._guard:
                    waiting = self._pending.get(key)
                    if waiting:
                        waiting.popleft()
                        self.queued_bytes -= size
                    more = bool(waiting)
                    if waiting is not None and not more:
                        del self._pending[key]
                if more:
                    self._ready.put(key)
        finally:
            push.close(0)

    def close(self, timeout: float = 5.0) -> bool:
        """Stop the workers after their current request (queued ones are dropped: clients resend)
        and close the PULL socket; returns whether every worker stopped within ``timeout``."""
        with self._guard:
            self._pending.clear()
            self.queued_bytes = 0
        for _ in self._threads:
            self._ready.put(None)
        stopped = True
        for t in self._threads:
            t.join(timeout)
            stopped = stopped and not t.is_alive()
        self.replies.close(0)
        return stopped
