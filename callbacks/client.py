"""Reliable request-reply with the tuner server: ZeroMQ "Lazy Pirate" (no torch here).

One REQ socket (LINGER 0) carries one request at a time. A request that gets no reply within
its time is resent on a *fresh* socket (a REQ socket that sent cannot send again until it
receives, and a closed socket drops whatever the old peer connection still held) with the
*same* sequence number, so the server recognises the resend and answers from its reply cache
instead of applying the request twice.

Two ways to use it:

* blocking: ``request(kind, body, timeout)`` returns the reply body, raises
  :class:`ServerError` for an error reply and :class:`ServerUnavailable` when the time is up
  (the request then stays pending);
* non-blocking: ``send`` once, then ``poll_reply(0)`` now and then and ``resend()`` when it
  has been quiet too long. This is how the callback keeps training while the server is down.

A reply is accepted only when it decodes as protocol JSON and carries the pending request's
``seq``; anything else counts as no reply. The one exception is an error reply without a
``seq``: the server sends those when it could not read the request at all (``too_large``,
``malformed``), and on a REQ socket that reply can only be the answer to our last send.

With a shared secret (``secret=``, else ``$AUTOLRS_SECRET`` / ``$AUTOLRS_SECRET_FILE``) every
transmission carries an auth frame (:mod:`autolrs.wire.auth`), signed afresh for each resend so the
server's replay check never refuses a retry; the payload, and its ``seq``, stay the same.
With the server's CURVE public key (``server_key=``, else ``$AUTOLRS_SERVER_KEY``) every socket
encrypts its traffic and checks it talks to that server (an ephemeral client key pair).
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import zmq

from autolrs.wire import auth, protocol
from autolrs.callbacks.errors import ServerError, ServerUnavailable

log = logging.getLogger(__name__)

__all__ = ["Client", "ServerError", "ServerUnavailable"]


class Client:
    """Request-reply with one server endpoint for one job (see the module docstring).

    ``timeout`` is the default total time a blocking :meth:`request` may take; within it the
    request is sent up to ``attempts`` times, each on a fresh socket. ``secret`` (str or bytes;
    default from the environment, see :func:`autolrs.wire.auth.resolve_secret`) signs every request.
    """

    def __init__(
        self,
        endpoint: str,
        job_id: str,
        timeout: float = 5.0,
        client_id: str | None = None,
        *,
        attempts: int = 3,
        context: zmq.Context | None = None,
        secret: str | bytes | None = None,
        server_key: str | bytes | None = None,
        credential: str | None = None,
    ):
        if not (isinstance(endpoint, str) and endpoint.startswith("inproc://")):  # (a link with no server to reach)
            protocol.check_endpoint(endpoint)
        if not protocol.is_valid_job_id(job_id):
            raise ValueError(
                f"invalid job id {job_id!r}: 1-128 characters of letters, digits, '.', '_' "
                "or '-', starting with a letter or digit"
            )
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0, got {timeout!r}")
        if attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {attempts!r}")
        self.endpoint = endpoint
        self.job_id = job_id
        self.timeout = float(timeout)
        self.attempts = int(attempts)
        self.client_id = client_id or uuid.uuid4().hex
        #: The job's credential (taken from the hello reply that created the job), carried by
        #: every request sent from now on; None until the job has one.
        self.credential = credential
        try:
            self._secret = auth.resolve_secret(secret)
            self._server_key = auth.resolve_server_key(server_key)
        except auth.SecretError as exc:
            raise ValueError(str(exc)) from None
        self._curve_pair = zmq.curve_keypair() if self._server_key is not None else None
        self._context = context or zmq.Context.instance()
        self._socket: zmq.Socket | None = None
        # True while the current socket has sent the pending frame and not received yet.
        self._awaiting = False
        self._next_seq = 0
        # The request waiting for its reply: (kind, seq, frame); None when there is none.
        self._pending: tuple[str, int, bytes] | None = None
        self._closed = False
        #: monotonic time of the last (re)send of the pending request.
        self.last_sent: float | None = None
        # Fail on a malformed endpoint now, not at the first send.
        self._open()

    # --- properties --------------------------------------------------------------------

    @property
    def pending(self) -> bool:
        """Whether a request is waiting for its reply."""
        return self._pending is not None

    @property
    def pending_kind(self) -> str | None:
        return None if self._pending is None else self._pending[0]

    @property
    def pending_seq(self) -> int | None:
        return None if self._pending is None else self._pending[1]

    @property
    def next_seq(self) -> int:
        """The sequence number the next new request will carry."""
        return self._next_seq

    @property
    def closed(self) -> bool:
        return self._closed

    # --- blocking ----------------------------------------------------------------------

    def request(self, kind: str, body: dict | None = None, timeout: float | None = None) -> dict:
        """Send a new request and wait up to ``timeout`` s (default: the client's) for its reply.

        Resends on a fresh socket, same ``seq``, each ``timeout / attempts`` s. Returns the
        reply body; raises :class:`ServerError` on an error reply, :class:`ServerUnavailable`
        when the time is up (the request stays pending: ``poll_reply``/``resend`` go on).
        """
        timeout = self.timeout if timeout is None else max(0.0, float(timeout))
        deadline = time.monotonic() + timeout
        per_try = timeout / self.attempts
        self.send(kind, body)
        while True:
            now = time.monotonic()
            wait = min(per_try, deadline - now)
            reply = self.poll_reply(wait)
            if reply is not None:
                return reply
            if time.monotonic() >= deadline - 1e-3:
                raise ServerUnavailable(
                    f"no reply from {self.endpoint} to {kind} seq {self.pending_seq} within {timeout:g} s"
                )
            log.debug("no reply to %s seq %s; resending on a fresh socket", kind, self.pending_seq)
            self.resend()

    # --- non-blocking ------------------------------------------------------------------

    def send(self, kind: str, body: dict | None = None) -> int:
        """Start a new request (a new ``seq``) without waiting; return its seq.

        A request still pending is abandoned (its reply, should it come, is never read).
        """
        self._check_open()
        if self._pending is not None or self._awaiting:
            self._reset_socket()
        seq = self._next_seq
        self._next_seq += 1
        frame = protocol.dumps(
            protocol.request(
                kind, body, job_id=self.job_id, client_id=self.client_id, seq=seq, credential=self.credential
            )
        )
        self._pending = (kind, seq, frame)
        self._transmit()
        return seq

    def resend(self) -> None:
        """Send the pending request again, same ``seq``, on a fresh socket (no-op if none)."""
        self._check_open()
        if self._pending is None:
            return
        self._reset_socket()
        self._transmit()

    def poll_reply(self, timeout: float = 0) -> dict | None:
        """The pending request's reply body if it arrives within ``timeout`` s, else None.

        Raises :class:`ServerError` for an error reply (the request is then no longer pending).
        Replies to other requests and undecodable frames are discarded (they count as none).
        """
        if self._pending is None or self._closed:
            return None
        deadline = time.monotonic() + max(0.0, float(timeout))
        while True:
            if not self._awaiting:
                # The send did not go out, or a bad reply used up this socket's turn: the
                # request goes again at the next resend; until then there is nothing to read.
                remaining = deadline - time.monotonic()
                if remaining > 0:
                    time.sleep(remaining)
                return None
            remaining = deadline - time.monotonic()
            assert self._socket is not None
            if not self._socket.poll(max(0, int(remaining * 1000 + 0.999)), zmq.POLLIN):
                if time.monotonic() >= deadline:
                    return None
                continue
            try:
                frame = self._socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                continue
            self._awaiting = False
            reply = self._accept(frame)
            if reply is not None:
                return self._finish(reply)

    def close(self) -> None:
        """Close the socket and forget the pending request (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._pending = None
        self._close_socket()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals ---------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("client is closed")

    def _open(self) -> None:
        sock = self._context.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        if self.endpoint.startswith("tcp://["):
            sock.setsockopt(zmq.IPV6, 1)
        if self._server_key is not None:
            sock.curve_serverkey = self._server_key
            sock.curve_publickey, sock.curve_secretkey = self._curve_pair
        try:
            sock.connect(self.endpoint)
        except zmq.ZMQError as exc:
            sock.close(0)
            raise ValueError(f"cannot connect to {self.endpoint!r}: {exc}") from None
        self._socket = sock
        self._awaiting = False

    def _close_socket(self) -> None:
        if self._socket is not None:
            self._socket.close(0)
            self._socket = None
        self._awaiting = False

    def _reset_socket(self) -> None:
        self._close_socket()
        self._open()

    def _transmit(self) -> None:
        assert self._pending is not None
        if self._socket is None:
            self._open()
        self.last_sent = time.monotonic()
        try:
            # Never blocks: with nothing connected yet zmq queues the frame for the peer.
            frame = self._pending[2]
            if self._secret is None:
                self._socket.send(frame, zmq.NOBLOCK)
            else:
                self._socket.send_multipart([frame, auth.sign(self._secret, frame)], zmq.NOBLOCK)
        except zmq.Again:
            log.debug("send would block; the request goes at the next resend")
            return
        self._awaiting = True

    def _accept(self, frame: bytes) -> dict | None:
        """The decoded reply if it answers the pending request, else None (discarded)."""
        try:
            msg = protocol.loads(frame)
        except protocol.ProtocolError:
            log.debug("discarded an undecodable reply of %d bytes", len(frame))
            return None
        if not isinstance(msg, dict) or msg.get("status") not in ("ok", "error"):
            log.debug("discarded a reply that is not a protocol reply envelope")
            return None
        assert self._pending is not None
        if "seq" in msg:
            if msg["seq"] != self._pending[1] or isinstance(msg["seq"], bool):
                log.debug("discarded a reply for seq %r (waiting for %d)", msg["seq"], self._pending[1])
                return None
        elif msg["status"] != "error":
            log.debug("discarded an ok reply without seq")
            return None
        if "job_id" in msg and msg["job_id"] != self.job_id:
            log.debug("discarded a reply for job %r", msg["job_id"])
            return None
        return msg

    def _finish(self, msg: dict[str, Any]) -> dict:
        self._pending = None
        if msg["status"] == "error":
            err = msg.get("error")
            err = err if isinstance(err, dict) else {}
            raise ServerError(str(err.get("code", protocol.ErrorCode.INTERNAL)), str(err.get("message", "")))
        body = msg.get("body", {})
        body = body if isinstance(body, dict) else {}
        if msg.get("type") == "hello_reply" and isinstance(body.get("credential"), str) and body["credential"]:
            self.credential = body["credential"]  # the job is ours: every later request carries it
        return body
