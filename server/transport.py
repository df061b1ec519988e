"""The ZeroMQ loop: a ROUTER socket in front of the dispatcher.

ROUTER (not REP) so that one malformed peer cannot wedge the socket's strict send/recv
alternation, and so a reply goes back to exactly the peer that asked. Each incoming message is
``[routing frames..., payload]``: the last frame is the request, the rest are echoed back as
the envelope (a REQ client sends ``[id, b"", payload]``). The loop polls with a short timeout
so ``stop()`` from another thread or a signal handler is honoured promptly.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import zmq

from autolrs.server.config import ServerConfig
from autolrs.server.dispatcher import Dispatcher
from autolrs.server.sessions import SessionStore

log = logging.getLogger(__name__)

POLL_MS = 100
#: A message with more frames than this is no client's; dropped unanswered.
MAX_FRAMES = 16
#: zmq disconnects a peer sending a frame above this (a memory guard). It is a multiple of the
#: dispatcher's limit so that a merely too-large request still gets a ``too_large`` reply.
MAXMSGSIZE_FACTOR = 4


class Server:
    """A bound ROUTER socket plus its dispatcher. ``serve_forever()`` blocks until ``stop()``."""

    def __init__(self, config: ServerConfig, dispatcher: Dispatcher, *, context: zmq.Context | None = None):
        self.config = config
        self.dispatcher = dispatcher
        self._own_context = context is None
        self.context = context or zmq.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.MAXMSGSIZE, MAXMSGSIZE_FACTOR * config.max_message_bytes + 65536)
        # Replies already queued get a moment to leave on close; then give up.
        self.socket.setsockopt(zmq.LINGER, 1000)
        host = config.host
        if ":" in host:  # an IPv6 address
            self.socket.setsockopt(zmq.IPV6, 1)
            host = f"[{host.strip('[]')}]"
        try:
            self.socket.bind(f"tcp://{host}:{config.port}")
        except zmq.ZMQError:
            self.socket.close(0)
            if self._own_context:
                self.context.term()
            raise
        #: The endpoint actually bound (with the real port when port 0 asked for a free one).
        self.endpoint: str = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._closed = False

    def serve_forever(self) -> None:
        """Answer requests until ``stop()``; call from one thread at a time."""
        if self._closed:
            raise RuntimeError("server is closed")
        self._idle.clear()
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                if not poller.poll(POLL_MS):
                    continue
                # Drain what is queued, but re-check the stop flag now and then.
                for _ in range(100):
                    try:
                        frames = self.socket.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self._answer(frames)
        finally:
            self._idle.set()

    def _answer(self, frames: list[bytes]) -> None:
        if len(frames) < 2 or len(frames) > MAX_FRAMES:
            log.warning("dropped a message of %d frames (expected routing frames then one payload)", len(frames))
            return
        reply = self.dispatcher.handle(frames[-1])
        try:
            self.socket.send_multipart(frames[:-1] + [reply], zmq.NOBLOCK)
        except zmq.Again:  # the peer is not reading (its queue is full): drop rather than block
            log.warning("dropped a reply: the peer's queue is full")
        except zmq.ZMQError as exc:
            log.warning("could not send a reply: %s", exc)

    def stop(self) -> None:
        """Ask ``serve_forever`` to return (thread- and signal-handler-safe)."""
        self._stop.set()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the loop (waiting up to ``timeout`` s for it), close the socket and the store lock."""
        if self._closed:
            return
        self.stop()
        if not self._idle.wait(timeout):
            log.warning("serve_forever did not return within %.1f s; closing anyway", timeout)
        self._closed = True
        self.socket.close()
        if self._own_context:
            self.context.term()
        self.dispatcher.store.close()

    def serve_in_thread(self, name: str = "autolrs-server") -> threading.Thread:
        """Start ``serve_forever`` in a daemon thread (for tests and embedding); returns it."""
        thread = threading.Thread(target=self.serve_forever, name=name, daemon=True)
        thread.start()
        return thread

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_server(config: ServerConfig, store: SessionStore | None = None) -> Server:
    """Load the sessions under ``config.state_dir`` and bind the socket; does not block."""
    store = store if store is not None else SessionStore(Path(config.state_dir), fsync=config.fsync)
    try:
        return Server(config, Dispatcher(config, store))
    except BaseException:
        store.close()  # release the state-dir lock when the port cannot be bound
        raise
