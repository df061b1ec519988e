"""The ZeroMQ loop: a ROUTER socket in front of the dispatcher.

ROUTER (not REP) so that one malformed peer cannot wedge the socket's strict send/recv
alternation, and so a reply goes back to exactly the peer that asked. Each incoming message is
``[routing frames..., payload]`` or, signed, ``[routing frames..., payload, auth]`` (see
:mod:`autolrs.wire.auth`): the routing frames are echoed back as the envelope (a REQ client sends
``[id, b"", payload]``). The loop polls with a short timeout so ``stop()`` from another thread
or a signal handler is honoured promptly.

The socket thread checks signatures and decodes; answering runs on a
:class:`~autolrs.server.pool.WorkerPool` (one job's requests in order, different jobs at once),
whose replies come back over an inproc socket polled next to the ROUTER. A server with a
secret answers an unsigned, badly signed or replayed request with ``unauthenticated`` from the
socket thread, before the payload is even decoded: it reaches no session. Whatever a message
holds, the socket thread answers it or drops it and goes on: no request stops the server.

Memory: a frame above ``max_message_bytes`` is answered ``too_large`` unread, zmq drops a peer
sending one 4x larger, and requests waiting for a worker hold at most ``max_backlog_bytes``
(beyond it a new request is dropped unanswered, like a lost message: its client resends later).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import zmq

from autolrs.wire import auth, protocol
from autolrs.wire.protocol import ErrorCode
from autolrs.server.config import ServerConfig
from autolrs.server.dispatcher import Dispatcher
from autolrs.server.pool import WorkerPool
from autolrs.server.security import admin_token_path, check_bind, curve_keys, load_admin_token, server_secret
from autolrs.server.sessions import SessionStore
from autolrs.server.tuner_host import make_host

log = logging.getLogger(__name__)

POLL_MS = 100
#: A message with more frames than this is no client's; dropped unanswered.
MAX_FRAMES = 16
#: zmq disconnects a peer sending a frame above this (a memory guard). It is a multiple of the
#: dispatcher's limit so that a merely too-large request still gets a ``too_large`` reply.
MAXMSGSIZE_FACTOR = 4
#: Warnings about refused or dropped requests: at most one per kind this often.
WARN_EVERY_S = 10.0


def _peer_address(frame: zmq.Frame) -> str | None:
    """The address the message came from (ZeroMQ's ``Peer-Address``), None when unknown."""
    try:
        address = frame.get("Peer-Address")
        return address if isinstance(address, str) else None
    except (zmq.ZMQError, AttributeError, UnicodeDecodeError):
        return None


class Server:
    """A bound ROUTER socket plus its dispatcher. ``serve_forever()`` blocks until ``stop()``."""

    def __init__(
        self,
        config: ServerConfig,
        dispatcher: Dispatcher,
        *,
        context: zmq.Context | None = None,
        verifier: auth.Verifier | None = None,
        curve: tuple[bytes, bytes] | None = None,
    ):
        self.config = config
        self.dispatcher = dispatcher
        #: Checks request signatures; None: the server takes unsigned requests.
        self.verifier = verifier
        self.pool: WorkerPool | None = None
        self._own_context = context is None
        self.context = context or zmq.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.MAXMSGSIZE, MAXMSGSIZE_FACTOR * config.max_message_bytes + 65536)
        # Replies already queued get a moment to leave on close; then give up.
        self.socket.setsockopt(zmq.LINGER, 1000)
        #: The CURVE public key clients need (Z85), or None when traffic is not encrypted.
        self.public_key: bytes | None = None
        if curve is not None:  # every connection must complete a CURVE handshake with this key
            self.public_key, self.socket.curve_secretkey = curve
            self.socket.curve_publickey = self.public_key
            self.socket.curve_server = True
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
        self._workers_stuck = False
        # kind -> (time of the last warning, warnings left out since)
        self._warned: dict[str, tuple[float, int]] = {}

    def serve_forever(self) -> None:
        """Answer requests until ``stop()``; call from one thread at a time."""
        if self._closed:
            raise RuntimeError("server is closed")
        self._idle.clear()
        pool = self.pool = WorkerPool(self.context, self.dispatcher.respond, answering_threads(self.config))
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        poller.register(pool.replies, zmq.POLLIN)
        reap_every = self.dispatcher.leases.reap_interval()
        next_reap = time.monotonic() + reap_every
        try:
            while not self._stop.is_set():
                events = dict(poller.poll(POLL_MS))
                # Replies first: they free clients; then drain requests, re-checking stop now and then.
                if pool.replies in events:
                    for _ in range(1000):
                        try:
                            self._send(pool.replies.recv_multipart(zmq.NOBLOCK))
                        except zmq.Again:
                            break
                if self.socket in events:
                    for _ in range(100):
                        try:
                            frames = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        self._accept(frames)
                if time.monotonic() >= next_reap:
                    self.dispatcher.reap()
                    next_reap = time.monotonic() + reap_every
        finally:
            if not pool.close():
                # Its socket is still open, so terminating the context would hang: close() skips that.
                self._workers_stuck = True
                log.warning("a worker was still answering a request when the server stopped")
            self.pool = None
            self._idle.set()

    def _accept(self, frames: list[zmq.Frame]) -> None:
        """Check one incoming message and hand it to the pool (or answer a refusal at once).
        Never raises: a failure on one message is answered as ``internal`` (or, before its
        routing is known, the message is dropped) and logged."""
        routing: list[bytes] | None = None
        try:
            if len(frames) < 2 or len(frames) > MAX_FRAMES:
                log.warning("dropped a message of %d frames (expected routing frames then one payload)", len(frames))
                return
            peer = _peer_address(frames[-1])
            routing, payload, signature = auth.split_frames([f.bytes for f in frames])
            if self.verifier is not None:
                try:
                    self.verifier.verify(payload, signature)
                except auth.AuthError as exc:
                    self._warn_limited("auth", "refused a request: %s", exc)
                    self._send(routing + [self._refusal(ErrorCode.UNAUTHENTICATED, str(exc))])
                    return
            if self.pool.queued_bytes + len(payload) > self.config.max_backlog_bytes:
                self._warn_limited(
                    "backlog",
                    "dropped a request: %d bytes of requests wait for a worker (max_backlog_bytes %d)",
                    self.pool.queued_bytes,
                    self.config.max_backlog_bytes,
                )
                return
            parsed = self.dispatcher.parse(payload, peer)
            if parsed.error is not None:
                self._send(routing + [parsed.error])
                return
            if parsed.kind == "ping":  # touches no job: answered here, never queued behind tuner work
                self._send(routing + [self.dispatcher.respond(parsed)])
                return
            self.pool.submit(parsed.job_id, routing, parsed, size=len(payload))
        except Exception:  # noqa: BLE001 - one message must never stop the server
            log.exception("internal error while accepting a request")
            if routing is not None:
                self._send(routing + [self._refusal(ErrorCode.INTERNAL, "internal server error; see the server log")])

    @staticmethod
    def _refusal(code: str, message: str) -> bytes:
        return protocol.dumps(protocol.error_reply(None, code, message))

    def _warn_limited(self, key: str, message: str, *args: object) -> None:
        """A warning at most every WARN_EVERY_S per kind (a flood must not flood the log too);
        the ones left out are counted in the next."""
        now = time.monotonic()
        last, skipped = self._warned.get(key, (-WARN_EVERY_S, 0))
        if now - last < WARN_EVERY_S:
            self._warned[key] = (last, skipped + 1)
            return
        self._warned[key] = (now, 0)
        if skipped:
            message += f" (and {skipped} more like it in the last {now - last:.0f} s)"
        log.warning(message, *args)

    def _send(self, frames: list[bytes]) -> None:
        try:
            self.socket.send_multipart(frames, zmq.NOBLOCK)
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
        if self._own_context and not self._workers_stuck:
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


def answering_threads(config: ServerConfig) -> int:
    """Threads answering requests: ``workers``, and at least two per tuner process (a thread
    waits while its request's tuner works, so each process needs one busy and one queued)."""
    return max(config.workers, 2 * config.processes)


def make_server(
    config: ServerConfig,
    store: SessionStore | None = None,
    *,
    secret: str | bytes | None = None,
    start_tuner_processes: bool = True,
) -> Server:
    """Load the sessions under ``config.state_dir``, start the tuner processes
    (``server.processes``; their imports go on in the background; with
    ``start_tuner_processes=False`` each starts when its first job needs it) and bind the
    socket; does not wait for requests.

    The secret is ``secret``, else ``server.secret_file``, else ``$AUTOLRS_SECRET`` /
    ``$AUTOLRS_SECRET_FILE``; with none, requests need no signature, and a non-loopback
    ``host`` raises ConfigError unless ``server.allow_insecure``.
    """
    key = server_secret(config, secret)
    check_bind(config, key)
    verifier = None if key is None else auth.Verifier(key, config.auth_window_s)
    curve = curve_keys(config)
    if store is None:
        tuners = make_host(config.processes, config.tuner_timeout_s)
        try:
            store = SessionStore(Path(config.state_dir), fsync=config.fsync, tuners=tuners)
        except BaseException:
            tuners.close()
            raise
    try:
        admin_token = load_admin_token(admin_token_path(config))
        server = Server(config, Dispatcher(config, store, admin_token), verifier=verifier, curve=curve)
        if start_tuner_processes:
            store.tuners.start()
        return server
    except BaseException:
        store.close()  # release the state-dir lock when the port cannot be bound
        raise
