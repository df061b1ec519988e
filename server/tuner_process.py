"""One tuner process of :class:`~autolrs.server.tuner_host.ProcessTuners` and the pipe to it.

It answers one call at a time (a lock is held for the whole call, and while a process starts).
A process is started in the background, forked from the forkserver; one found dead between two
calls is replaced and the call sent to the new one; one that dies during a call, or does not
answer within ``tuner_timeout_s`` (then it is killed), makes the call raise
:class:`TunerProcessDied`. What the server does about each case: :mod:`autolrs.server.tuner_host`.
"""

from __future__ import annotations

import logging
import pickle
import threading
import time
from collections import deque
from multiprocessing.connection import wait
from typing import TYPE_CHECKING, Any

from autolrs.server import tuner_worker

if TYPE_CHECKING:
    from autolrs.server.tuner_host import RemoteTuner

log = logging.getLogger(__name__)

__all__ = ["ProcessUnavailable", "TunerProcess", "TunerProcessDied"]

#: A process not ready this long after it was started is given up.
START_TIMEOUT_S = 120.0
#: After a failed start, the next try in the background waits this long.
RETRY_START_S = 10.0


class TunerProcessDied(RuntimeError):
    """The tuner process of a call died (or was killed for taking too long) before answering:
    the call's effect is lost with the process; the request must be sent again."""


class ProcessUnavailable(Exception):
    """The process cannot take a call now; nothing was sent (the call may run elsewhere)."""


class _NotSent(Exception):
    """The request could not be written to the process (it had died): it was not seen."""


class TunerProcess:
    """One tuner process and the pipe to it: one call at a time, restarted when found dead."""

    def __init__(self, index: int, context: Any, timeout_s: float):
        self.index = index
        self.timeout_s = timeout_s
        self._context = context
        self._lock = threading.Lock()  # held for a whole call, and while a process starts
        self._flags = threading.Lock()  # guards _starting
        self._proc: Any = None
        self._conn: Any = None
        self._ready = threading.Event()
        #: A process of this slot was ready once: from then on calls wait for a restart
        #: instead of running in the server process.
        self._was_ready = False
        self._starting = False
        self._next_try = 0.0
        self._closed = False
        #: Incremented with every start: a tuner built in an earlier process is rebuilt.
        self.incarnation = 0
        self.restarts = 0
        #: The job whose call is in flight (``status`` shows it).
        self.busy: str | None = None
        #: Tuners whose sessions are gone, forgotten with the next request (a finalizer takes no lock).
        self._drops: deque[int] = deque()
        self._held: set[int] = set()

    # --- life --------------------------------------------------------------------------

    def available(self) -> bool:
        """Whether calls go to the process: it is ready, or it was and is to be restarted."""
        return not self._closed and (self._ready.is_set() or (self._was_ready and time.monotonic() >= self._next_try))

    def start_async(self) -> None:
        """Start the process in a background thread (if it is not up or starting, and a
        failed start is not too recent)."""
        with self._flags:
            if self._closed or self._starting or self._ready.is_set() or time.monotonic() < self._next_try:
                return
            self._starting = True
        threading.Thread(
            target=self._start_in_background, name=f"autolrs-tuners-{self.index}-start", daemon=True
        ).start()

    def _start_in_background(self) -> None:
        try:
            with self._lock:
                if not self._ready.is_set():
                    self._launch()
        except ProcessUnavailable:  # logged; retried after RETRY_START_S
            pass
        finally:
            self._starting = False

    def _launch(self) -> None:
        """Start a process and wait for it to be ready (lock held); ProcessUnavailable if it cannot."""
        if self._closed:
            raise ProcessUnavailable("closed")
        if self._proc is not None:
            self._reap("is being replaced")
        ours, theirs = self._context.Pipe(duplex=True)
        proc = self._context.Process(
            target=tuner_worker.main, args=(theirs,), daemon=True, name=f"autolrs-tuners-{self.index}"
        )
        try:
            proc.start()
        except Exception as exc:  # noqa: BLE001 - e.g. out of processes or memory
            ours.close()
            theirs.close()
            log.error(
                "could not start tuner process %d (%s: %s); its jobs' tuners run in the server process meanwhile",
                self.index,
                type(exc).__name__,
                exc,
            )
            self._next_try = time.monotonic() + RETRY_START_S
            raise ProcessUnavailable(str(exc)) from exc
        theirs.close()  # only the child's copy stays open: its death closes the pipe
        self._proc, self._conn = proc, ours
        self.incarnation += 1
        self._drops.clear()  # the new process holds no tuner yet
        self._held.clear()
        hello = None
        if _readable(ours, proc, START_TIMEOUT_S):
            try:
                hello = ours.recv()
            except (EOFError, OSError):
                pass
        if not (isinstance(hello, tuple) and hello[:1] == (tuner_worker.READY,)):
            code = self._reap("did not start")
            log.error(
                "tuner process %d did not start (exit code %s); its jobs' tuners run in the server process meanwhile",
                self.index,
                code,
            )
            self._next_try = time.monotonic() + RETRY_START_S
            raise ProcessUnavailable(f"exit code {code}")
        self._ready.set()
        log.info("tuner process %d %s (pid %d)", self.index, "restarted" if self._was_ready else "ready", proc.pid)
        if self._was_ready:
            self.restarts += 1
        self._was_ready = True

    def wait_ready(self, timeout: float | None) -> bool:
        return self._ready.wait(timeout)

    def _reap(self, why: str) -> int | None:
        """Make sure the process is gone (SIGKILL if needed); returns its exit code."""
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        self._ready.clear()
        if conn is not None:
            conn.close()
        if proc is None:
            return None
        if proc.is_alive():
            proc.kill()
        proc.join(5.0)
        if why != "is being replaced":
            log.warning("tuner process %d (pid %s) %s; exit code %s", self.index, proc.pid, why, proc.exitcode)
        return proc.exitcode

    def close(self, timeout: float = 5.0) -> None:
        """Close the pipe (the process's loop ends) and wait for it, SIGKILL after ``timeout``.
        A call in flight is not waited for: its caller gets TunerProcessDied."""
        self._closed = True
        self._ready.clear()
        proc, conn = self._proc, self._conn
        if conn is not None:
            conn.close()
        if proc is not None:
            proc.join(timeout)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout)

    # --- calls -------------------------------------------------------------------------

    def make(self, tuner: "RemoteTuner") -> None:
        """Build ``tuner`` in this process from its last state; ProcessUnavailable if there is no
        process to build it in."""
        with self._lock:
            self._sending(tuner, lambda: None)

    def call(self, tuner: "RemoteTuner", method: str, args: tuple, kwargs: dict) -> Any:
        """``tuner.method(*args, **kwargs)`` in this process (built there first if needed); its
        view is refreshed. ProcessUnavailable when nothing could be sent."""
        with self._lock:
            ok, blob = self._sending(tuner, lambda: self._exchange(tuner, "call", (method, args, kwargs)))
        if not ok:
            tuner_worker.raise_error(blob)
        return pickle.loads(blob)

    def _sending(self, tuner: "RemoteTuner", exchange: Any) -> Any:
        """Make sure ``tuner`` is in a live process, then ``exchange()`` (lock held). A process
        found dead before the request was sent (it died between calls) is replaced and the
        request sent to the new one; one that dies once the request is sent raises
        TunerProcessDied, whether or not it had read it (it may be what killed it)."""
        for attempt in range(2):
            self._ensure_ready()
            try:
                if tuner.incarnation != self.incarnation:
                    self._make(tuner)
                outcome = exchange()
            except _NotSent as exc:
                self._reap(f"died between requests ({exc})")
                if attempt:
                    raise TunerProcessDied(
                        f"tuner process {self.index} could not take a request of job {tuner.job!r} ({exc})"
                    ) from None
                continue
            if outcome is None:
                return None
            result, view = outcome
            tuner.refresh(view, self.incarnation)
            return result
        raise AssertionError("unreachable")

    def _ensure_ready(self) -> None:
        """A live, ready process (lock held): one that died since its last call is replaced
        (fast: the forkserver is up); ProcessUnavailable if none can be started."""
        if self._ready.is_set() and self._proc is not None and self._proc.is_alive():
            return
        if self._proc is not None:
            self._reap("died between requests")
        self._launch()

    def _make(self, tuner: "RemoteTuner") -> None:
        name, config, seed, state = tuner.source()
        (ok, blob), view = self._exchange(tuner, "make", (name, config, seed, state))
        if not ok:
            tuner_worker.raise_error(blob)
        tuner.refresh(view, self.incarnation)
        self._held.add(tuner.key)

    def _exchange(self, tuner: "RemoteTuner", op: str, payload: Any) -> Any:
        drops = []
        while self._drops:
            drops.append(self._drops.popleft())
        self._held.difference_update(drops)
        self.busy = tuner.job
        try:
            if self._conn.poll(0):  # nothing is due between calls: this is the EOF of a process gone
                raise _NotSent("its pipe is closed")
            try:
                self._conn.send((drops, op, tuner.key, payload))
            except (BrokenPipeError, OSError) as exc:  # its end is closed: it never saw this request
                raise _NotSent(str(exc)) from None
            if not _readable(self._conn, self._proc, self.timeout_s):
                raise self._died(tuner, f"did not answer within tuner_timeout_s ({self.timeout_s:g} s) and was killed")
            try:
                return self._conn.recv()
            except (EOFError, OSError):
                raise self._died(tuner, "died") from None
        finally:
            self.busy = None

    def _died(self, tuner: "RemoteTuner", why: str) -> TunerProcessDied:
        pid = None if self._proc is None else self._proc.pid
        self._reap(f"{why} during a request of job {tuner.job}")
        return TunerProcessDied(
            f"tuner process {self.index} (pid {pid}) {why} during a request of job "
            f"{tuner.job!r}; the request was not applied: send it again"
        )

    def forget(self, key: int, incarnation: int) -> None:
        """A tuner's session is gone: drop it with the next request (called from a finalizer)."""
        if incarnation == self.incarnation:
            self._drops.append(key)

    def describe(self) -> dict:
        proc = self._proc
        return {
            "index": self.index,
            "pid": None if proc is None else proc.pid,
            "ready": self._ready.is_set(),
            "tuners": len(self._held) - len(self._drops),
            "busy": self.busy,
            "restarts": self.restarts,
        }


def _readable(conn: Any, proc: Any, timeout: float) -> bool:
    """Wait until ``conn`` has something to read or the process ended (then reading gives
    EOF, which the caller handles); False after ``timeout``."""
    ready = wait([conn, proc.sentinel], timeout)
    return bool(ready)
