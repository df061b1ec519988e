"""``ServerProcess``: a tuner server in a child process, for programs that need a real, separate
server without a shell script around them (the examples' launchers, the benchmarks, the tests).

    from autolrs.server import ServerProcess

    with ServerProcess() as server:                        # state in a private temp folder
        cb = AutoLRS(model, optimizer, tuner="cosine", server=server.endpoint)

It runs ``python -m autolrs.server --port PORT --state-dir DIR [args]`` with the current
interpreter, waits for its ready line and reads the endpoint from it (``port=0``, the default,
lets the server pick a free port). Standard library only: importing it loads neither zmq nor
the tuners, and the callback's embedded server (``server="auto"``) uses it too. Its public
name is ``autolrs.server.ServerProcess``.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Mapping

__all__ = ["DASHBOARD_PREFIX", "READY_PREFIX", "ServerProcess"]

#: The start of the line the server prints on stdout once it listens (``cli.serve``).
READY_PREFIX = "autolrs-server listening on "
#: The line a server started with ``--http-port`` prints next: then the dashboard's URL.
DASHBOARD_PREFIX = "dashboard at "


class ServerProcess:
    """A server in a child process, started and ready when the constructor returns.

    ``state_dir``: the server's state folder (jobs survive a restart on the same folder);
    ``None`` makes a private temporary folder that :meth:`close` removes. ``args`` are more
    command-line options (``"--config", "server.yaml"``, ``"--secret-file", path``, ...);
    ``env`` adds environment variables. The server's stderr (its log) goes to ``log_path``
    (default: next to ``state_dir``, or inside the temporary folder). Raises RuntimeError with
    the log when the server exits or prints no ready line within ``ready_timeout`` s.

    ``endpoint`` (``tcp://127.0.0.1:PORT``) and ``port`` say where it listens; with
    ``--http-port`` in ``args``, ``dashboard_url`` is the dashboard's URL (from the line after
    the ready line; None otherwise). :meth:`close`
    stops it with SIGTERM (SIGKILL after ``timeout`` s); :meth:`kill` is SIGKILL at once (a
    crash, for tests). Usable as a context manager.

    ``lifeline=True`` ties the server's life to this process: the server reads its standard
    input, a pipe this object holds open, and stops when it closes, so a parent that dies
    without :meth:`close` (SIGKILL, a crash) leaves no server running (``--stop-on-stdin-close``).
    """

    def __init__(
        self,
        state_dir: str | Path | None = None,
        *args: str,
        port: int = 0,
        log_path: str | Path | None = None,
        ready_timeout: float = 30.0,
        timeout: float = 10.0,
        env: Mapping[str, str] | None = None,
        lifeline: bool = False,
    ):
        self._tmpdir = tempfile.mkdtemp(prefix="autolrs-server-") if state_dir is None else None
        if self._tmpdir is not None:
            state_dir = Path(self._tmpdir) / "state"
            log_path = log_path or Path(self._tmpdir) / "server.log"
        self.state_dir = Path(state_dir)
        self.timeout = timeout
        self.log_path = Path(log_path) if log_path else self.state_dir.parent / f"server-{uuid.uuid4().hex[:6]}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "wb")
        cmd = [sys.executable, "-m", "autolrs.server", "--port", str(port), "--state-dir", str(self.state_dir), *args]
        if lifeline:
            cmd.append("--stop-on-stdin-close")
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            text=True,
            stdin=subprocess.PIPE if lifeline else None,
            env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
        )
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, name="autolrs-server-stdout", daemon=True).start()
        try:
            self.ready_line = self._wait_ready(ready_timeout)
        except BaseException:
            self.close()
            raise
        self.endpoint = self.ready_line[len(READY_PREFIX) :].split()[0]
        self.port = int(self.endpoint.rsplit(":", 1)[1])
        self.dashboard_url: str | None = None
        if "--http-port" in args:
            line = self._next_line(ready_timeout)
            if line is None or not line.startswith(DASHBOARD_PREFIX):
                self.kill()
                raise RuntimeError(f"server printed no dashboard line (got {line!r}); log:\n{self.log()}")
            self.dashboard_url = line[len(DASHBOARD_PREFIX) :].strip()

    def __repr__(self) -> str:
        state = "running" if self.alive else f"exited ({self.proc.returncode})"
        return f"ServerProcess(endpoint={getattr(self, 'endpoint', None)!r}, pid={self.proc.pid}, {state})"

    @property
    def alive(self) -> bool:
        """Whether the child process is still running."""
        return self.proc.poll() is None

    def log(self) -> str:
        """The server's log (its stderr) so far."""
        if not self._log_file.closed:
            self._log_file.flush()
        return self.log_path.read_text(errors="replace")

    def admin_token(self) -> str:
        """The server's admin token from its default file, ``<state_dir>/admin.token`` (the
        server makes it at start): a ``status`` carrying it lists every job in full."""
        return (self.state_dir / "admin.token").read_text(encoding="utf-8").strip()

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to exit; its exit code."""
        return self.proc.wait(self.timeout if timeout is None else timeout)

    def kill(self) -> None:
        """SIGKILL, no clean shutdown (the state folder keeps what the last reply saved)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(self.timeout)

    def close(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout``) and remove the temporary
        folder if this object made one (idempotent)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        if not self._log_file.closed:
            self._log_file.close()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- start-up ----------------------------------------------------------------------

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def _next_line(self, timeout: float) -> str | None:
        """The next stdout line (None at end of output); RuntimeError after ``timeout`` s."""
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            raise RuntimeError(f"server printed no line within {timeout} s; log:\n{self.log()}") from None

    def _wait_ready(self, timeout: float) -> str:
        line = self._next_line(timeout)
        if line is None or not line.startswith(READY_PREFIX):
            self.kill()
            raise RuntimeError(f"server did not start (first line {line!r}); log:\n{self.log()}")
        return line
