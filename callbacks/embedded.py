"""``server="auto"``, the default: ``$AUTOLRS_SERVER`` when set, else a private server.

The private (embedded) server is an ordinary ``python -m autolrs.server`` in a child process,
started through :class:`autolrs.launcher.ServerProcess` (the class behind
``autolrs.server.ServerProcess``) when the callback starts its job and stopped when it
closes. It behaves exactly like a standalone server: same code, same protocol, same state
files. What is particular to it:

* its state lives in a per-user cache folder, one folder per job
  (``<cache>/autolrs/jobs/<job>/``: ``state/`` is the server's state dir, ``server.log`` its
  log), so a trainer restarted from its own checkpoint (``load_state_dict``) starts a server on
  the same folder and resumes the job. ``<cache>`` is ``$AUTOLRS_CACHE_DIR``, else
  ``$XDG_CACHE_HOME``, else ``~/.cache``. A job that ended (its goodbye was answered) cannot
  be resumed, so its folder is removed at close; a job whose trainer died keeps it;
* it listens on a free loopback port and signs every request with a random secret kept in the
  job's folder (mode 0600), so no other local process can drive the job;
* it is tied to this process by a lifeline (its standard input): if the trainer dies without
  closing, the server stops too and frees the folder for the restarted trainer;
* with ``dashboard=True`` (``AutoLRS(..., dashboard=True)``) it also serves the dashboard on a
  free loopback port and prints its URL (with the job's dashboard token) to stderr;
* it is ready as soon as it listens and imports the tuners' modules in the background
  (``--background-tuner-import``), so the callback waits a fraction of a second for it; a job
  whose tuner is still being imported waits for that in its first hello.

Standard library only (the callback package must not import the server or the tuners).
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import sys
import time
from pathlib import Path

from autolrs.launcher import ServerProcess

log = logging.getLogger(__name__)

__all__ = [
    "AUTO",
    "ENV_SERVER",
    "NOT_STARTED",
    "EmbeddedServer",
    "EmbeddedServerError",
    "cache_root",
    "resolve_endpoint",
]

#: The ``server`` value that means: ``$AUTOLRS_SERVER``, else an embedded server.
AUTO = "auto"
#: The environment variable naming a server for every ``server="auto"`` callback.
ENV_SERVER = "AUTOLRS_SERVER"
#: Where a link points when its embedded server could not start: a valid endpoint that no server
#: binds (the link is detached and never sends).
NOT_STARTED = "inproc://autolrs-embedded-server-not-started"
#: How long a start waits for a server of the same job to let go of its folder (one that a
#: trainer killed a moment ago is still stopping).
LOCK_WAIT_S = 10.0


class EmbeddedServerError(RuntimeError):
    """The embedded server could not start (the message says why; its log is kept).
    ``in_use``: the job's folder is held by another live server (another trainer runs the job)."""

    def __init__(self, message: str, in_use: bool = False):
        super().__init__(message)
        self.in_use = in_use


def resolve_endpoint(server: str) -> str | None:
    """The endpoint ``server`` names: itself, ``$AUTOLRS_SERVER`` for ``"auto"`` when set, or
    None: ``"auto"`` with no such variable means an embedded server."""
    if server != AUTO:
        return server
    return os.environ.get(ENV_SERVER, "").strip() or None


def cache_root() -> Path:
    """``$AUTOLRS_CACHE_DIR``, else ``$XDG_CACHE_HOME/autolrs``, else ``~/.cache/autolrs``."""
    explicit = os.environ.get("AUTOLRS_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "autolrs"


class EmbeddedServer:
    """The private server of one callback, for one job at a time (see the module doc)."""

    def __init__(self, root: str | os.PathLike | None = None, ready_timeout: float = 60.0, dashboard: bool = False):
        self.root = Path(root) if root is not None else cache_root()
        self.ready_timeout = ready_timeout
        #: Serve the dashboard on a free loopback port (``--http-port 0``); its URL, with the
        #: token the job's secret gives, is :attr:`dashboard_url` once started.
        self.dashboard = dashboard
        self.dashboard_url: str | None = None
        self.job: str | None = None
        self.process: ServerProcess | None = None
        self.secret: bytes | None = None

    @property
    def folder(self) -> Path | None:
        """The current job's folder (None before :meth:`start`)."""
        return None if self.job is None else self.root / "jobs" / self.job

    @property
    def state_dir(self) -> Path | None:
        """The server's state folder: ``jobs/<job>/decisions.jsonl`` there is the decision log."""
        return None if self.folder is None else self.folder / "state"

    @property
    def endpoint(self) -> str | None:
        return None if self.process is None else self.process.endpoint

    def start(self, job: str) -> str:
        """A server for ``job`` (stopping the one of another job); its endpoint. Raises
        :class:`EmbeddedServerError` when it cannot start."""
        if self.process is not None and self.job == job and self.process.alive:
            return self.process.endpoint
        self.stop()
        self.job = job
        folder = self.folder
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self.secret = _secret(folder / "secret")
        except OSError as exc:
            raise EmbeddedServerError(
                f"could not start the embedded server for job {job} (cannot use the cache folder {folder}: {exc})"
            ) from None
        deadline = time.monotonic() + LOCK_WAIT_S
        extra = ("--http-port", "0") if self.dashboard else ()
        while True:
            try:
                self.process = ServerProcess(
                    folder / "state",
                    "--secret-file",
                    str(folder / "secret"),
                    "--background-tuner-import",
                    *extra,
                    log_path=folder / "server.log",
                    ready_timeout=self.ready_timeout,
                    lifeline=True,
                )
                break
            except (RuntimeError, OSError) as exc:
                in_use = "in use by another autolrs server" in str(exc)
                if in_use and time.monotonic() < deadline:
                    time.sleep(0.2)  # the server of a trainer that just died is still stopping
                    continue
                first = str(exc).strip().splitlines()
                reason = "another process runs this job" if in_use else (first[-1] if first else type(exc).__name__)
                raise EmbeddedServerError(
                    f"could not start the embedded server for job {job} ({reason}; log: {folder / 'server.log'})",
                    in_use=in_use,
                ) from None
        log.info("autolrs: embedded server for job %s at %s (state in %s)", job, self.process.endpoint, folder)
        self.dashboard_url = self.process.dashboard_url
        if self.dashboard_url is not None:
            # Printed, not only logged: the user asked for it and has to open it.
            print(f"autolrs: dashboard of job {job} at {self.dashboard_url}", file=sys.stderr, flush=True)
        return self.process.endpoint

    def stop(self, ended: bool = False) -> None:
        """Stop the server; with ``ended`` (the job's goodbye was answered: nothing left to
        resume) remove the job's folder too. Idempotent."""
        if self.process is not None:
            self.process.close()
            self.process = None
            self.dashboard_url = None
        if ended and self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __repr__(self) -> str:
        return f"EmbeddedServer(job={self.job!r}, endpoint={self.endpoint!r}, folder={str(self.folder)!r})"


def _secret(path: Path) -> bytes:
    """The job's secret: read back for a resumed job, else made (readable by this user only)."""
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    value = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value.encode()
