"""Run a server as a child process: used by benchmarks, tests and scripts that need a real,
separate server (``python -m autolrs.server``), with its endpoint read from the ready line."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

READY_PREFIX = "autolrs-server listening on "
#: The line a server started with ``--http-port`` prints next: then the dashboard's URL.
DASHBOARD_PREFIX = "dashboard at "


class ServerProcess:
    """Start ``python -m autolrs.server --port PORT --state-dir DIR [args]`` and wait until ready.

    ``endpoint`` is where it listens; ``dashboard_url`` the dashboard's URL when ``args`` has
    ``--http-port`` (read from the line after the ready line). stderr goes to ``log_path``. ``close()`` sends SIGTERM (and
    kills after ``timeout``); ``kill()`` is SIGKILL, for crash tests. Usable as a context manager.
    """

    def __init__(self, state_dir: str | Path, *args: str, port: int = 0, log_path: str | Path | None = None,
                 ready_timeout: float = 30.0, timeout: float = 10.0):
        self.state_dir = Path(state_dir)
        self.timeout = timeout
        self.log_path = Path(log_path) if log_path else self.state_dir.parent / f"server-{uuid.uuid4().hex[:6]}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "wb")
        cmd = [sys.executable, "-m", "autolrs.server", "--port", str(port), "--state-dir", str(state_dir), *args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log_file, text=True, env=env)
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.ready_line = self._wait_ready(ready_timeout)
        self.endpoint = self.ready_line[len(READY_PREFIX):].split()[0]
        self.port = int(self.endpoint.rsplit(":", 1)[1])
        self.dashboard_url: str | None = None
        if "--http-port" in args:
            line = self._next_line(ready_timeout)
            if line is None or not line.startswith(DASHBOARD_PREFIX):
                self.kill()
                raise RuntimeError(f"server printed no dashboard line (got {line!r}); log:\n{self.log()}")
            self.dashboard_url = line[len(DASHBOARD_PREFIX):].strip()

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

    def log(self) -> str:
        self._log_file.flush()
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float | None = None) -> int:
        return self.proc.wait(self.timeout if timeout is None else timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(self.timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        if not self._log_file.closed:
            self._log_file.close()

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
