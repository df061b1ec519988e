"""Helpers for the dashboard tests: HTTP requests with urllib, real training on digits with the
callback, a browse-mode dashboard process, and waiting for a condition."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import torch
import torch.nn.functional as F

from autolrs.testing.training import make_mlp

ROOT = Path(__file__).resolve().parents[2]
#: Screenshots land next to the benchmarks' output.
SHOTS = ROOT / "bench" / "out"
WAIT_S = 20.0


def get(url: str, token: str | None = None, headers: dict | None = None, method: str = "GET"):
    """(status, headers, body) of one request; HTTP errors are returned, not raised."""
    request = urllib.request.Request(url, method=method, headers=dict(headers or {}))
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def get_json(url: str, token: str | None = None) -> dict:
    status, _, body = get(url, token)
    assert status == 200, (status, body[:300])
    return json.loads(body)


def wait_for(predicate, timeout: float = WAIT_S, interval: float = 0.2, what: str = "a condition"):
    """Poll ``predicate`` until it returns something truthy (returned); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


class DigitsLoop:
    """A small MLP trained on scikit-learn's digits, one ``cb.step`` per optimizer step."""

    def __init__(self, digits, lr: float = 0.05, seed: int = 1):
        self.x, self.y = digits
        self.model = make_mlp(seed=seed)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=0.9)
        self.g = torch.Generator().manual_seed(seed)
        self.batch = self._draw()

    def _draw(self):
        idx = torch.randint(0, len(self.x), (32,), generator=self.g)
        return self.x[idx], self.y[idx]

    def probe_loss(self):
        """The loss of the current batch (a loss_diff ``probe_fn``)."""
        return F.cross_entropy(self.model(self.batch[0]), self.batch[1])

    def val_loss(self) -> float:
        with torch.no_grad():
            return F.cross_entropy(self.model(self.x[-300:]), self.y[-300:]).item()

    def train(self, cb, steps: int) -> int:
        """Up to ``steps`` steps (fewer if the tuner says stop); returns how many ran."""
        done = 0
        while done < steps and not cb.should_stop:
            self.batch = self._draw()
            self.optimizer.zero_grad()
            loss = self.probe_loss()
            cb.backward(loss)
            self.optimizer.step()
            cb.step(loss)
            done += 1
        return done


class DashboardProcess:
    """``python -m autolrs.server dashboard --state-dir DIR --http-port 0 [args]``; ``url`` from its line."""

    def __init__(self, state_dir, *args: str, env: dict | None = None, timeout: float = 30.0):
        cmd = [sys.executable, "-m", "autolrs.server", "dashboard", "--state-dir", str(state_dir),
               "--http-port", "0", *args]
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"})
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in self.proc.stdout] + [lines.put(None)],
                         daemon=True).start()
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            line = None
        if line is None:
            self.close()
            raise RuntimeError(f"the dashboard did not start (exit {self.proc.returncode}): {self.stderr()}")
        self.line = line.strip()
        assert self.line.startswith("dashboard at http://"), (self.line, self.stderr())
        self.url = self.line[len("dashboard at "):]

    def stderr(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def close(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode
