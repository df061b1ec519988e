"""Where the jobs' tuners run: in the server process, or in tuner processes (one per core).

Sessions, the dispatcher and every rule about requests (resends, order, ownership, leases,
limits, status) stay in the server process. A session's tuner is made through a *host*:

* :class:`InProcessTuners` (``server.processes: 0``) builds ordinary tuner objects: every fit
  runs under the server's one interpreter lock.
* :class:`ProcessTuners` (``server.processes: N``, default one per core) keeps each tuner in
  one of N tuner processes, chosen by a hash of the job id (a job stays pinned to its process),
  and hands the session a :class:`RemoteTuner`. A call that changes the tuner (``tell``,
  ``load_state_dict``, ...) goes to the process and comes back with the tuner's *view*: what
  ``ask``, ``state_dict``, ``summary`` and the other side-effect-free methods return now (see
  :mod:`autolrs.server.tuner_worker`). Reading costs no round trip, so ``status``, the dashboard
  and the state saved after each request never wait for a fit. Each process answers one call
  at a time; calls for different processes run at once, on different cores.

Failure handling. Every change of a session is saved to ``state.json`` before its reply
leaves, and the server keeps each remote tuner's last state (in its view), so a tuner process
holds nothing the server does not also have:

* A process that dies during a call (killed, out of memory, a crash in native code) closes its
  pipe; the waiting call raises :class:`TunerProcessDied`, which the dispatcher answers as
  ``internal`` after rolling the session back to where it stood before the request. Clients
  send the request again (the callback retries an ``internal`` reply). The call is not run
  again in the server process: the request may be what killed the process.
* The next call for that process starts a new one (forked from a forkserver that has the
  tuners imported: milliseconds) and rebuilds each tuner there from its last state when it is
  first used. No job is lost and no report is applied twice.
* A call running longer than ``tuner_timeout_s`` (a tuner stuck in a loop) has its process
  killed and is answered the same way, so one stuck tuner cannot hold up the other jobs of its
  process for good.
* Until a process is ready for the first time (the forkserver imports the tuners when the
  server starts, a few seconds), and whenever one cannot be started, its jobs' tuners run in
  the server process, as with ``processes: 0``; they move to their process with their state at
  their first call once it is up. So a server answers at once after its ready line, and a
  machine that cannot start processes degrades to one core instead of failing requests.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing as mp
import pickle
import threading
import time
import weakref
import zlib
from collections import deque
from multiprocessing.connection import wait
from typing import Any, Mapping

from autolrs.tuners import Tuner, make_tuner

from autolrs.server import tuner_worker

log = logging.getLogger(__name__)

__all__ = ["InProcessTuners", "ProcessTuners", "RemoteTuner", "TunerProcessDied", "build_tuner", "make_host"]

#: A process not ready this long after it was started is given up.
START_TIMEOUT_S = 120.0
#: After a failed start, the next try in the background waits this long.
RETRY_START_S = 10.0


def build_tuner(
    name: str, config: Mapping[str, Any], seed: int, state: Mapping[str, Any] | None = None, *, job: str | None = None
) -> Tuner:
    """An ordinary tuner object, with ``state`` loaded when given (``job`` only names it)."""
    tuner = make_tuner(name, config, seed)
    if state is not None:
        tuner.load_state_dict(state)
    return tuner


class InProcessTuners:
    """Tuners as ordinary objects in the server process."""

    processes = 0

    @staticmethod
    def make(
        name: str,
        config: Mapping[str, Any],
        seed: int,
        state: Mapping[str, Any] | None = None,
        *,
        job: str | None = None,
    ) -> Tuner:
        return build_tuner(name, config, seed, state, job=job)

    def start(self) -> None:
        pass

    def wait_ready(self, timeout: float | None = None) -> bool:
        return True

    def describe(self) -> list[dict]:
        return []

    def close(self) -> None:
        pass


def make_host(processes: int, timeout_s: float = 60.0) -> "InProcessTuners | ProcessTuners":
    """The host for ``server.processes`` (0: in the server process)."""
    return InProcessTuners() if processes == 0 else ProcessTuners(processes, timeout_s)


class TunerProcessDied(RuntimeError):
    """The tuner process of a call died (or was killed for taking too long) before answering:
    the call's effect is lost with the process; the request must be sent again."""


class _Unavailable(Exception):
    """The process cannot take a call now; nothing was sent (the call may run elsewhere)."""


class _NotSent(Exception):
    """The request could not be written to the process (it had died): it was not seen."""


class ProcessTuners:
    """``processes`` tuner processes; jobs are pinned to one by a hash of their id."""

    def __init__(self, processes: int, timeout_s: float = 60.0):
        if processes < 1:
            raise ValueError(f"processes must be >= 1, got {processes}")
        self.processes = processes
        self.timeout_s = float(timeout_s)
        context = _context()
        self.slots = [TunerProcess(i, context, self.timeout_s) for i in range(processes)]

    def start(self) -> None:
        """Start every process, in the background (the first waits for the forkserver's imports)."""
        for slot in self.slots:
            slot.start_async()

    def slot_of(self, job: str | None) -> "TunerProcess":
        """The process of ``job`` (a stable hash: the same in every server process)."""
        return self.slots[zlib.crc32((job or "").encode("utf-8")) % self.processes]

    def make(
        self,
        name: str,
        config: Mapping[str, Any],
        seed: int,
        state: Mapping[str, Any] | None = None,
        *,
        job: str | None = None,
    ) -> "RemoteTuner":
        """A tuner pinned to ``job``'s process. A new one (``state`` None) is built at once, so a
        bad config raises here. One with a state (loaded from disk, or a rollback) is checked
        here, by building it in this process, and built in its process when first used."""
        if state is None:
            tuner = RemoteTuner(self.slot_of(job), job, name, config, seed, None)
            tuner.place()
            return tuner
        build_tuner(name, config, seed, state)  # a damaged state raises now, as for in-process tuners
        return RemoteTuner(self.slot_of(job), job, name, config, seed, pickle.dumps(dict(state)))

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Start the processes if needed and wait until all are ready; whether they were in time."""
        self.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        return all(
            slot.wait_ready(None if deadline is None else max(0.0, deadline - time.monotonic())) for slot in self.slots
        )

    def describe(self) -> list[dict]:
        """One row per process (what ``status`` lists): index, pid, ready, tuners held, the job
        of the call in flight (``busy``), restarts."""
        return [slot.describe() for slot in self.slots]

    def close(self, timeout: float = 5.0) -> None:
        """End every process (closing its pipe ends its loop; SIGKILL after ``timeout``)."""
        for slot in self.slots:
            slot.close(timeout)


def _context() -> Any:
    """Fork from a forkserver that has the tuners imported: a process starts in milliseconds
    and shares those pages, and nothing is forked from the threaded server itself. Spawn where
    there is no forkserver."""
    try:
        ctx = mp.get_context("forkserver")
    except ValueError:  # not on this platform
        return mp.get_context("spawn")
    ctx.set_forkserver_preload(["autolrs.server.tuner_worker", "autolrs.server.tuner_imports"])
    return ctx


_keys = itertools.count(1)


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
        except _Unavailable:  # logged; retried after RETRY_START_S
            pass
        finally:
            self._starting = False

    def _launch(self) -> None:
        """Start a process and wait for it to be ready (lock held); _Unavailable if it cannot."""
        if self._closed:
            raise _Unavailable("closed")
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
            raise _Unavailable(str(exc)) from exc
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
            raise _Unavailable(f"exit code {code}")
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
        """Build ``tuner`` in this process from its last state; _Unavailable if there is no
        process to build it in."""
        with self._lock:
            self._sending(tuner, lambda: None)

    def call(self, tuner: "RemoteTuner", method: str, args: tuple, kwargs: dict) -> Any:
        """``tuner.method(*args, **kwargs)`` in this process (built there first if needed); its
        view is refreshed. _Unavailable when nothing could be sent."""
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
        (fast: the forkserver is up); _Unavailable if none can be started."""
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


class RemoteTuner:
    """The server's handle of a tuner that lives in a tuner process (see the module doc).

    Methods that change the tuner are calls to its process; the side-effect-free ones and
    ``notices`` are read from the view it answered with, unpickled afresh on every read so no
    caller can change what the next one sees. Name, config and seed stay here, so the tuner can
    be rebuilt anywhere from its last state. While its process is not available the tuner runs
    here (``local``), and moves to the process with its state at the first call once it is.
    """

    def __init__(
        self, slot: TunerProcess, job: str | None, name: str, config: Mapping[str, Any], seed: int, state: bytes | None
    ):
        self.job = job
        self.name = name
        self.config = dict(config)
        self.seed = int(seed)
        self.key = next(_keys)
        #: The start of the process the tuner was built in (None: not built in one).
        self.incarnation: int | None = None
        #: The tuner itself while it runs in the server process.
        self.local: Tuner | None = None
        self._slot = slot
        self._state = state  # pickled; the state to build from until the first view
        self._view: dict[str, tuple[bool, bytes]] | None = None
        self._finalizer: weakref.finalize | None = None

    # --- plumbing ----------------------------------------------------------------------

    def place(self) -> None:
        """Build the tuner: in its process when that is available, else here."""
        if self._slot.available():
            try:
                self._slot.make(self)
                return
            except _Unavailable:
                pass
        else:
            self._slot.start_async()
        self._run_here()

    def source(self) -> tuple[str, dict, int, dict | None]:
        """What rebuilds this tuner: name, config, seed and its last state."""
        state: dict | None
        if self.local is not None:
            state = self.local.state_dict()
        elif self._view is not None and self._view.get("state_dict", (False,))[0]:
            state = pickle.loads(self._view["state_dict"][1])
        else:
            state = None if self._state is None else pickle.loads(self._state)
        return self.name, self.config, self.seed, state

    def refresh(self, view: dict | None, incarnation: int) -> None:
        """Take the view a call answered with (the tuner now lives in process ``incarnation``)."""
        if view is not None:
            self._view = view
            self._state = None
            self.local = None
        if self.incarnation != incarnation:
            self.incarnation = incarnation
            if self._finalizer is not None:
                self._finalizer.detach()
            self._finalizer = weakref.finalize(self, self._slot.forget, self.key, incarnation)

    def _run_here(self) -> None:
        if self.local is not None:
            return
        self.local = build_tuner(*self.source())
        self._view = None
        if self._finalizer is not None:  # the copy in a process is stale from now on
            self._finalizer()
            self._finalizer = None
        self.incarnation = None

    def _read(self, name: str) -> Any:
        if self.local is None and self._view is None:
            self.place()
        if self.local is not None:
            value = getattr(self.local, name)
            return value() if name in tuner_worker.PURE else value
        try:
            ok, blob = (self._view or {})[name]
        except KeyError:
            raise AttributeError(f"tuner {self.name!r} has no {name!r}") from None
        if not ok:
            tuner_worker.raise_error(blob)
        return pickle.loads(blob)

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self._slot.available():
            try:
                return self._slot.call(self, method, args, kwargs)
            except _Unavailable:
                pass
        else:
            self._slot.start_async()
        self._run_here()
        return getattr(self.local, method)(*args, **kwargs)

    # --- the tuner contract ------------------------------------------------------------

    def ask(self) -> list[dict]:
        return self._read("ask")

    def state_dict(self) -> dict:
        return self._read("state_dict")

    def summary(self) -> dict:
        return self._read("summary")

    def lr_bounds(self) -> tuple[float, float]:
        return self._read("lr_bounds")

    @property
    def notices(self) -> list[str]:
        return self._read("notices")

    def tell(self, observation: Any) -> None:
        self._call("tell", observation)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._call("load_state_dict", dict(state))

    def __getattr__(self, name: str) -> Any:
        """Any other method: a side-effect-free one from the view, else a call to the process."""
        if name.startswith("_"):
            raise AttributeError(name)
        if name in tuner_worker.PURE:
            return lambda: self._read(name)
        return lambda *args, **kwargs: self._call(name, *args, **kwargs)

    def __repr__(self) -> str:
        where = "here" if self.local is not None else f"process {self._slot.index}"
        return f"RemoteTuner({self.name!r}, job={self.job!r}, {where})"
