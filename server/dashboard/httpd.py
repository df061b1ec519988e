"""The dashboard's HTTP server: the standard library's ThreadingHTTPServer in a daemon thread.

Read-only: GET and HEAD; anything else is 405. Routes:

* ``/``                 the job list (static HTML; its script polls the API)
* ``/jobs/<id>``        one job's page
* ``/static/<name>``    the pages' CSS, JavaScript and icon, shipped in the package
* ``/api/jobs``         the job list as JSON (token required when the server has a secret)
* ``/api/jobs/<id>``    one job as JSON (404 when unknown)

A job list answer is cached for ``cache_s`` (1 s), so any number of open pages costs the
server one listing per second at most. Nothing is fetched from elsewhere: the Content Security
Policy allows only this origin's scripts, styles and connections.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import unquote, urlsplit

from autolrs.server.dashboard import access
from autolrs.server.dashboard.api import DashboardAPI, encode

log = logging.getLogger(__name__)

PAGES = {"index": "index.html", "job": "job.html"}
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _static_files() -> dict[str, bytes]:
    """Every file of the package's static/ folder (read once: a few tens of kB)."""
    folder = resources.files("autolrs.server.dashboard").joinpath("static")
    return {item.name: item.read_bytes() for item in folder.iterdir() if item.is_file()}


class DashboardServer:
    """Serve ``source``'s jobs on ``host:port`` (0: a free port). ``start()`` runs it in a
    daemon thread; ``close()`` stops it. ``token``: required by the API when not None."""

    def __init__(self, source, host: str = "127.0.0.1", port: int = 0, token: str | None = None, cache_s: float = 1.0):
        self.api = DashboardAPI(source)
        self.token = token
        self.bind_host = host
        self.cache_s = cache_s
        self.files = _static_files()
        self._list_cache: tuple[float, bytes] | None = None
        self._list_guard = threading.Lock()
        server_class = _IPv6Server if ":" in host else _Server
        self.httpd = server_class((host.strip("[]"), port), _Handler)
        self.httpd.app = self
        self.port = self.httpd.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.bind_host.strip('[]')}]" if ":" in self.bind_host else self.bind_host
        return f"http://{host}:{self.port}/"

    @property
    def open_url(self) -> str:
        """The URL to open in a browser: with the token when one is required."""
        return self.url if self.token is None else f"{self.url}?token={self.token}"

    def start(self) -> "DashboardServer":
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2}, name="autolrs-dashboard", daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(5)
            self._thread = None
        self.httpd.server_close()

    def __enter__(self) -> "DashboardServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def jobs_json(self) -> bytes:
        with self._list_guard:
            now = time.monotonic()
            if self._list_cache is None or now - self._list_cache[0] >= self.cache_s:
                self._list_cache = (now, encode(self.api.jobs()))
            return self._list_cache[1]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    app: DashboardServer


class _IPv6Server(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "autolrs-dashboard"
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - the http.server naming
        self._route(send_body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._route(send_body=False)

    def _refuse_method(self) -> None:
        self.close_connection = True  # its body (if any) is not read: do not reuse the connection
        self._send(
            405,
            b'{"error": "the dashboard is read-only: GET and HEAD only"}',
            "application/json",
            extra={"Allow": "GET, HEAD"},
        )

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse_method  # noqa: N815

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's signature
        log.debug("%s %s", self.address_string(), format % args)

    def _route(self, send_body: bool) -> None:
        self._send_body = send_body
        app = self.server.app
        try:
            if not access.host_allowed(app.bind_host, self.headers.get("Host")):
                self._json_error(403, "this dashboard answers only to localhost names (Host header refused)")
                return
            url = urlsplit(self.path)
            path = url.path
            if path == "/" or path == "/index.html":
                self._page("index", url.query)
            elif path.startswith("/jobs/"):
                self._page("job", url.query)
            elif path.startswith("/static/"):
                self._static(path[len("/static/") :])
            elif path == "/favicon.ico":
                self._static("favicon.svg")
            elif path == "/api/jobs" or path.startswith("/api/jobs/"):
                if not access.token_matches(app.token, access.presented_token(self.headers, url.query)):
                    self._json_error(
                        401,
                        "this dashboard needs its token: open the URL the server printed "
                        "(?token=...), or see `autolrs-server dashboard-token`",
                    )
                    return
                if path == "/api/jobs":
                    self._send(200, app.jobs_json(), "application/json")
                else:
                    job_id = unquote(path[len("/api/jobs/") :])
                    payload = app.api.job(job_id)
                    if payload is None:
                        self._json_error(404, f"no job {job_id!r}")
                    else:
                        self._send(200, encode(payload), "application/json")
            else:
                self._json_error(404, f"no page {path!r}")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser went away
        except Exception:  # noqa: BLE001 - one bad request must not stop the dashboard
            log.exception("dashboard request %s failed", self.path)
            try:
                self._json_error(500, "internal error; see the server log")
            except OSError:
                pass

    def _page(self, name: str, query: str) -> None:
        app = self.server.app
        extra = {}
        presented = access.presented_token(self.headers, query)
        if app.token is not None and presented is not None and access.token_matches(app.token, presented):
            extra["Set-Cookie"] = access.cookie_header(app.token)
        self._send(200, app.files[PAGES[name]], CONTENT_TYPES[".html"], extra=extra)

    def _static(self, name: str) -> None:
        body = self.server.app.files.get(name)
        if body is None or "/" in name:
            self._json_error(404, f"no file {name!r}")
            return
        suffix = name[name.rfind(".") :]
        self._send(
            200, body, CONTENT_TYPES.get(suffix, "application/octet-stream"), extra={"Cache-Control": "no-cache"}
        )

    def _json_error(self, status: int, message: str) -> None:
        self._send(status, encode({"error": message}), "application/json")

    def _send(self, status: int, body: bytes, content_type: str, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        if content_type == "application/json":
            self.send_header("Cache-Control", "no-store")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if getattr(self, "_send_body", True):
            self.wfile.write(body)
