"""Helpers importable from any test folder (a unique module name: every folder's conftest.py
is a module called ``conftest``, so tests must not import from it). What the benchmarks share
with the tests lives in :mod:`autolrs.testing`; here: where the test data lies, and a job's
decision log read back with the LR of every step it dictates."""

from __future__ import annotations

import json
import os
from pathlib import Path


def decisions(state_dir: Path, job: str) -> list[dict]:
    """The records of a job's ``decisions.jsonl`` under a server's state folder."""
    lines = (Path(state_dir) / "jobs" / job / "decisions.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def lr_history(records: list[dict]) -> list[float]:
    """The LR of every step as the server's plans dictate (set_lr, run with or without lrs)."""
    lrs: list[float] = []
    lr = None
    for record in records:
        for action in record.get("plan") or []:
            if action["op"] == "set_lr":
                lr = action["lr"]
            elif action["op"] == "run":
                segment = action.get("lrs") or [lr] * action["steps"]
                lrs += segment
                lr = segment[-1]
    return lrs


def cifar_subset_dir() -> Path:
    """The CIFAR-10 subset the example tests train on: ``$CIFAR10_DIR``, else the shared data
    folder next to the checkout, else the one under /work (a checkout cloned elsewhere)."""
    candidates = [Path(os.environ["CIFAR10_DIR"])] if os.environ.get("CIFAR10_DIR") else []
    candidates += [Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar-10-subset-py",
                   Path("/work/shared/data/cifar-10-subset-py")]
    for folder in candidates:
        if (folder / "data_batch_1").is_file():
            return folder
    return candidates[0]


def tuner_processes(endpoint: str) -> list[dict]:
    """The ``tuner_processes`` rows of a running server's ``status``."""
    from autolrs.server.cli import request

    return request(endpoint, "status", 10.0)["body"]["server"]["tuner_processes"]


def wait_for_tuner_processes(endpoint: str, timeout: float = 120.0) -> list[dict]:
    """Wait until every tuner process of the server is ready (their imports take seconds)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        rows = tuner_processes(endpoint)
        if rows and all(r["ready"] for r in rows):
            return rows
        if time.monotonic() > deadline:
            raise AssertionError(f"tuner processes not ready after {timeout:g} s: {rows}")
        time.sleep(0.1)


class MidRequestKill:
    """SIGKILL the tuner process that holds a request of ``job`` while it is in flight.

    ``arm()`` stops (SIGSTOP) every tuner process of the server and starts a thread that polls
    ``status`` until a process shows a call of ``job`` in flight; it then SIGKILLs that one and
    lets the others go on (SIGCONT). Send the job's request after ``arm()``; ``join()`` returns
    the killed process's row. A stopped process cannot answer, so the request is in flight when
    it dies, however slow the machine."""

    def __init__(self, endpoint: str, job: str, timeout: float = 120.0):
        self.endpoint, self.job, self.timeout = endpoint, job, timeout
        self.killed: dict | None = None
        self.error: BaseException | None = None
        self._thread = None

    def arm(self) -> "MidRequestKill":
        import signal
        import threading

        self._pids = [r["pid"] for r in wait_for_tuner_processes(self.endpoint)]
        for pid in self._pids:
            os.kill(pid, signal.SIGSTOP)
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        import signal
        import time

        try:
            deadline = time.monotonic() + self.timeout
            while self.killed is None:
                for row in tuner_processes(self.endpoint):
                    if row["busy"] == self.job:
                        os.kill(row["pid"], signal.SIGKILL)
                        self.killed = row
                        break
                else:
                    if time.monotonic() > deadline:
                        raise AssertionError(f"no request of job {self.job} reached a tuner process")
                    time.sleep(0.02)
        except BaseException as exc:  # noqa: BLE001 - reported by join()
            self.error = exc
        finally:
            for pid in self._pids:
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass

    def join(self) -> dict:
        self._thread.join(self.timeout + 10)
        if self.error is not None:
            raise self.error
        assert self.killed is not None, "the watcher did not finish"
        return self.killed
