"""Request signing with a shared secret (stdlib only: the server and the callback import it).

A signed request is two ZeroMQ frames: the protocol's JSON payload, unchanged, then an auth
frame of ASCII text::

    autolrs-hmac1 <ts_ms> <nonce> <mac>

``mac`` is the hex HMAC-SHA256, under the secret, of ``b"autolrs-hmac1 <ts_ms> <nonce>\\n"``
followed by the exact payload bytes; ``ts_ms`` is the sender's clock in integer milliseconds
and ``nonce`` 32 random hex digits. The verifier accepts a timestamp within ``window`` seconds
of its own clock and each nonce once, so a captured request cannot be played again: not
within the window (the nonce is remembered) and not after it (the timestamp is too old). A
client that resends a request (lazy pirate) signs each copy afresh; the payload, and so its
``seq``, stays the same.

The secret comes from an explicit value, a file, or the environment (``AUTOLRS_SECRET``, then
``AUTOLRS_SECRET_FILE``); see :func:`resolve_secret`. Optional ZeroMQ CURVE encryption needs the
server's public key on the client side: :func:`resolve_server_key`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import threading
import time
from collections import deque
from pathlib import Path
from typing import Mapping

SCHEME = b"autolrs-hmac1"
_PREFIX = SCHEME + b" "
ENV_SECRET = "AUTOLRS_SECRET"
ENV_SECRET_FILE = "AUTOLRS_SECRET_FILE"
ENV_SERVER_KEY = "AUTOLRS_SERVER_KEY"
#: Shorter secrets are refused: HMAC is only as strong as a secret nobody can guess.
MIN_SECRET_BYTES = 16
DEFAULT_WINDOW_S = 120.0
#: The whole auth frame: the scheme, a timestamp of at most 16 digits (milliseconds: good until
#: the year 318857), 32 hex digits of nonce and 64 of MAC. Anything else is malformed.
_FRAME = re.compile(rb"(autolrs-hmac1 ([0-9]{1,16}) ([0-9a-f]{32})) ([0-9a-f]{64})")


class AuthError(Exception):
    """A request that is unsigned, badly signed, outside the time window, or replayed."""


class SecretError(ValueError):
    """A secret that cannot be used (unreadable file, too short)."""


def resolve_secret(
    secret: str | bytes | None = None,
    secret_file: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
) -> bytes | None:
    """The shared secret: ``secret``, else the file ``secret_file``, else ``$AUTOLRS_SECRET``,
    else the file named by ``$AUTOLRS_SECRET_FILE``; None when none is set (no signing).

    A file's content is used with surrounding whitespace stripped (a trailing newline is not
    part of the secret). Raises :class:`SecretError` for an unreadable file or a secret
    shorter than :data:`MIN_SECRET_BYTES`.
    """
    env = os.environ if env is None else env
    source = "the secret argument"
    if secret is None and secret_file is None:
        if env.get(ENV_SECRET):
            secret, source = env[ENV_SECRET], f"${ENV_SECRET}"
        elif env.get(ENV_SECRET_FILE):
            secret_file = env[ENV_SECRET_FILE]
    if secret is None and secret_file is not None:
        source = f"secret file {secret_file}"
        try:
            secret = Path(secret_file).read_bytes().strip()
        except OSError as exc:
            raise SecretError(f"cannot read {source}: {exc.strerror or exc}") from None
    if secret is None:
        return None
    key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    if len(key) < MIN_SECRET_BYTES:
        raise SecretError(
            f"{source} is {len(key)} bytes; a secret needs at least {MIN_SECRET_BYTES} "
            "(e.g. python -c 'import secrets; print(secrets.token_hex(32))')"
        )
    return key


def resolve_server_key(
    key: str | bytes | os.PathLike | None = None, env: Mapping[str, str] | None = None
) -> bytes | None:
    """The server's CURVE public key (40 Z85 characters) from ``key``, else ``$AUTOLRS_SERVER_KEY``;
    each is the key itself or the path of a certificate file (``autolrs-server keygen`` writes
    ``server.key``). None: no encryption. Raises :class:`SecretError` for anything else."""
    env = os.environ if env is None else env
    value = key if key is not None else env.get(ENV_SERVER_KEY) or None
    if value is None:
        return None
    text = os.fsdecode(value).strip() if not isinstance(value, str) else value.strip()
    if len(text) == 40 and not os.path.exists(text):
        return text.encode("ascii")
    try:
        import zmq.auth  # only here: this module is otherwise stdlib-only

        public, _ = zmq.auth.load_certificate(text)
    except (OSError, ValueError) as exc:
        raise SecretError(
            f"server key {text!r} is neither a 40-character Z85 key nor a readable certificate file: {exc}"
        ) from None
    if not public:
        raise SecretError(f"certificate file {text} holds no public key")
    return public


def _mac(key: bytes, header: bytes, payload: bytes) -> str:
    mac = hmac.new(key, header + b"\n", hashlib.sha256)
    mac.update(payload)
    return mac.hexdigest()


def sign(key: bytes, payload: bytes, now: float | None = None) -> bytes:
    """The auth frame for ``payload`` (fresh timestamp and nonce on every call)."""
    ts_ms = int((time.time() if now is None else now) * 1000)
    header = _PREFIX + f"{ts_ms} {secrets.token_hex(16)}".encode("ascii")
    return header + b" " + _mac(key, header, payload).encode("ascii")


def split_frames(frames: list[bytes]) -> tuple[list[bytes], bytes, bytes | None]:
    """``(routing frames, payload, auth frame or None)`` of a message a ROUTER received.

    The auth frame, when there is one, is last and starts with the scheme; the payload is
    the frame before it. Anything else is the unsigned layout ``[routing..., payload]``.
    """
    if len(frames) >= 3 and frames[-1].startswith(_PREFIX):
        return frames[:-2], frames[-2], frames[-1]
    return frames[:-1], frames[-1], None


class Verifier:
    """Checks auth frames against one secret and remembers nonces for replay detection.

    Nonces are kept ``2 * window`` seconds after they were seen: a replay later than that
    carries a timestamp outside the window. Thread-safe.
    """

    def __init__(self, key: bytes, window: float = DEFAULT_WINDOW_S):
        if not window > 0:
            raise ValueError(f"window must be > 0, got {window!r}")
        self._key = key
        self.window = float(window)
        self._seen: set[str] = set()
        self._order: deque[tuple[float, str]] = deque()
        self._lock = threading.Lock()

    def verify(self, payload: bytes, auth: bytes | None, now: float | None = None) -> None:
        """Return if ``auth`` is a valid, fresh signature of ``payload``; raise AuthError if not
        (and nothing else, whatever the frame holds)."""
        if auth is None:
            raise AuthError(
                "this server requires signed requests (a shared secret: AUTOLRS_SECRET or a "
                "secret file); the request carried no signature"
            )
        match = _FRAME.fullmatch(auth)
        if match is None:
            raise AuthError("malformed auth frame (expected 'autolrs-hmac1 <ts_ms> <nonce: 32 hex> <mac: 64 hex>')")
        header, ts_ms, nonce, mac = match.groups()
        if not hmac.compare_digest(_mac(self._key, header, payload).encode("ascii"), mac):
            raise AuthError("bad signature: the client's secret is not the server's, or the request was altered")
        now = time.time() if now is None else now
        skew = int(ts_ms) / 1000.0 - now  # at most 16 digits: a float, never an overflow
        if abs(skew) > self.window:
            raise AuthError(
                f"request timestamp is {skew:+.0f} s from the server's clock (allowed: "
                f"{self.window:g} s); a replay, or clocks out of sync"
            )
        nonce_text = nonce.decode("ascii")
        with self._lock:
            self._forget(now)
            if nonce_text in self._seen:
                raise AuthError("replayed request: this signature's nonce was already used")
            self._seen.add(nonce_text)
            self._order.append((now + 2 * self.window, nonce_text))

    def _forget(self, now: float) -> None:
        order, seen = self._order, self._seen
        while order and order[0][0] < now:
            seen.discard(order.popleft()[1])

    def __len__(self) -> int:
        return len(self._seen)
