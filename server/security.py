"""Who may drive the server and what: the shared secret and the rule for binding beyond
loopback (who may send requests at all), each job's credential (who may drive that job) and the
admin token (who may see every job in ``status``)."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
from pathlib import Path

from autolrs.wire import auth
from autolrs.errors import ConfigError
from autolrs.server.config import ServerConfig

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is only reachable from this machine (``localhost``, 127.0.0.0/8, ::1)."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name, an interface name, "*": assume reachable from outside
        return False


def server_secret(config: ServerConfig, secret: str | bytes | None = None) -> bytes | None:
    """The secret the server requires: ``secret``, else ``server.secret_file``, else the
    environment (see :func:`autolrs.wire.auth.resolve_secret`); None for an open server."""
    try:
        return auth.resolve_secret(secret, config.secret_file)
    except auth.SecretError as exc:
        raise ConfigError(str(exc)) from None


def curve_keys(config: ServerConfig) -> tuple[bytes, bytes] | None:
    """(public, secret) CURVE keys from ``server.curve_secret_key_file``; None without one."""
    if config.curve_secret_key_file is None:
        return None
    import zmq
    import zmq.auth

    if not zmq.has("curve"):
        raise ConfigError("server.curve_secret_key_file is set but this libzmq has no CURVE support")
    try:
        public, secret = zmq.auth.load_certificate(config.curve_secret_key_file)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read CURVE key file {config.curve_secret_key_file}: {exc}") from None
    if not secret:
        raise ConfigError(f"{config.curve_secret_key_file} holds no secret key (use the .key_secret file)")
    return public, secret


def check_bind(
    config: ServerConfig, key: bytes | None, host: str | None = None, exposes: str = "create, drive and read jobs"
) -> None:
    """Refuse a non-loopback address (``host``, default ``config.host``) without a secret unless
    ``allow_insecure``; warn if allowed. ``exposes`` says what a stranger could do there."""
    host = config.host if host is None else host
    if key is not None or is_loopback(host):
        return
    if not config.allow_insecure:
        raise ConfigError(
            f"refusing to bind {host} without a shared secret: anyone who can reach it could {exposes}. "
            f"Set one (--secret-file FILE, ${auth.ENV_SECRET} or ${auth.ENV_SECRET_FILE}), bind "
            "127.0.0.1, or pass --insecure (server.allow_insecure) if the network is trusted"
        )
    log.warning(
        "serving on %s WITHOUT a shared secret (allow_insecure): any host that can reach this port can %s",
        host,
        exposes,
    )


# --- job credentials and the admin token ---------------------------------------------------------

#: The admin token's file in the state dir unless ``server.admin_token_file`` names another.
ADMIN_TOKEN_FILE = "admin.token"


def new_credential() -> str:
    """A job's credential: 32 random bytes (``secrets``), URL-safe text of 43 characters."""
    return secrets.token_urlsafe(32)


def digest(token: str) -> str:
    """What the server keeps of a credential: its SHA-256 (the token itself is never stored)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def matches(token: object, kept: str) -> bool:
    """Whether ``token`` (from a request) is the credential whose digest is ``kept``."""
    if not isinstance(token, str) or not kept:
        return False
    return hmac.compare_digest(digest(token), kept)


def admin_token_path(config: ServerConfig) -> Path:
    return Path(config.admin_token_file) if config.admin_token_file else Path(config.state_dir) / ADMIN_TOKEN_FILE


def load_admin_token(path: str | os.PathLike) -> str:
    """The admin token stored in ``path``; made there first (mode 0600: only the server's own
    user reads it) when the file does not exist. Surrounding whitespace is not part of it."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        token = path.read_text(encoding="utf-8").strip()
        if len(token) < 16:
            raise ConfigError(
                f"admin token file {path} holds {len(token)} characters; delete it to make a "
                "new one, or put a token of 16 characters at least"
            ) from None
        return token
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    return token
