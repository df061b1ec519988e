"""Who may read the dashboard: a token derived from the server's secret, and the Host check.

With a shared secret the API answers only requests carrying the dashboard token, which is
``HMAC-SHA256(secret, "autolrs-dashboard-token-v1")`` in hex, first 32 digits: anyone holding
the secret can compute it (``autolrs-server dashboard-token``), and it reveals nothing of the
secret. The token grants reading only (the dashboard changes nothing). A browser presents it
as ``?token=`` once (the page then keeps it in an HttpOnly, SameSite=Strict cookie), or as an
``Authorization: Bearer`` header.

Bound to loopback, the dashboard also refuses requests whose Host header names another host:
a web page cannot then reach it through DNS rebinding.
"""

from __future__ import annotations

import hashlib
import hmac
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qs

from autolrs.server.security import is_loopback

TOKEN_CONTEXT = b"autolrs-dashboard-token-v1"
COOKIE = "autolrs_dashboard_token"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def dashboard_token(secret: bytes) -> str:
    """The token that opens the dashboard of a server with ``secret``."""
    return hmac.new(secret, TOKEN_CONTEXT, hashlib.sha256).hexdigest()[:32]


def presented_token(headers, query: str) -> str | None:
    """The token a request carries: ``Authorization: Bearer``, ``?token=`` or the cookie."""
    auth = headers.get("Authorization") or ""
    if auth.startswith("Bearer "):
        return auth[len("Bearer ") :].strip()
    tokens = parse_qs(query).get("token")
    if tokens:
        return tokens[0]
    try:
        morsel = SimpleCookie(headers.get("Cookie") or "").get(COOKIE)
    except CookieError:
        return None
    return morsel.value if morsel is not None else None


def token_matches(expected: str | None, presented: str | None) -> bool:
    if expected is None:
        return True
    return presented is not None and hmac.compare_digest(expected.encode(), presented.encode())


def cookie_header(token: str) -> str:
    return f"{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/"


def host_allowed(bind_host: str, host_header: str | None) -> bool:
    """Whether a request's Host header is acceptable for a server bound to ``bind_host``."""
    if not is_loopback(bind_host):
        return True  # reachable by name from elsewhere: the token guards it
    if not host_header:
        return False
    host = host_header.strip()
    if host.startswith("["):  # [::1]:port
        name = host[1 : host.find("]")] if "]" in host else host
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return name.lower() in LOOPBACK_NAMES or is_loopback(name)
