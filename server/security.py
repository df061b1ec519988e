"""Who may drive the server: the shared secret and the rule for binding beyond loopback."""

from __future__ import annotations

import ipaddress
import logging

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


def check_bind(config: ServerConfig, key: bytes | None, host: str | None = None,
               exposes: str = "create, drive and read jobs") -> None:
    """Refuse a non-loopback address (``host``, default ``config.host``) without a secret unless
    ``allow_insecure``; warn if allowed. ``exposes`` says what a stranger could do there."""
    host = config.host if host is None else host
    if key is not None or is_loopback(host):
        return
    if not config.allow_insecure:
        raise ConfigError(
            f"refusing to bind {host} without a shared secret: anyone who can reach it could {exposes}. "
            f"Set one (--secret-file FILE, ${auth.ENV_SECRET} or ${auth.ENV_SECRET_FILE}), bind "
            "127.0.0.1, or pass --insecure (server.allow_insecure) if the network is trusted")
    log.warning("serving on %s WITHOUT a shared secret (allow_insecure): any host that can reach this "
                "port can %s", host, exposes)
