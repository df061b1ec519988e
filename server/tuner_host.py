"""Where the jobs' tuners run: in the server process, or in tuner processes (one per core).

Sessions, the dispatcher and every rule about requests (resends, order, ownership, leases,
limits, status) stay in the server process. A session's tuner is made through a *host*:

* :class:`InProcessTuners` (``server.processes: 0``) builds ordinary tuner objects: every fit
  runs under the server's one interpreter lock.
* :class:`ProcessTuners` (``server.processes: N``, default one per core) keeps each tuner in
  one of N tuner processes (:mod:`autolrs.server.tuner_process`), chosen by a hash of the job id (a job stays pinned to its process),
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
import multiprocessing as mp
import pickle
import time
import weakref
import zlib
from typing import Any, Mapping

from autolrs.tuners import Tuner, make_tuner

from autolrs.server import tuner_worker
from autolrs.server.tuner_process import ProcessUnavailable, TunerProcess, TunerProcessDied

__all__ = ["InProcessTuners", "ProcessTuners", "RemoteTuner", "TunerProcessDied", "build_tuner", "make_host"]


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
            except ProcessUnavailable:
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
            except ProcessUnavailable:
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
