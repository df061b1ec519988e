"""One session per training job, kept on disk so a restarted server resumes every job.

Layout under the state dir::

    jobs/<job_id>/state.json        the whole session, rewritten atomically after every change
    jobs/<job_id>/decisions.jsonl   one line per applied request (hello/report/goodbye)
    server.lock                     held while a server uses the dir (two servers would race)

``state.json`` includes the last applied ``(client_id, seq)`` and its reply, so a request
resent after a crash is still recognised as a duplicate and answered from the cache.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from autolrs.wire import protocol
from autolrs.tuners import Tuner

from autolrs.server.tuner_host import InProcessTuners, build_tuner

log = logging.getLogger(__name__)

#: Version of the state.json layout, so a later server can migrate or refuse old files.
STATE_FORMAT = 1

ACTIVE = "active"
FINISHED = "finished"


class StateDirLocked(RuntimeError):
    """Another server process already uses this state dir."""


@dataclass
class Session:
    job_id: str
    tuner_name: str
    #: The config the tuner was built with (server defaults < hello config < job keys).
    config: dict
    #: The ``config`` field of the hello as sent: a resuming hello must match it.
    hello_config: dict
    seed: int
    tuner: Tuner
    status: str = ACTIVE
    #: The client that drives the job now (the last to say hello with its credential).
    owner: str = ""
    #: SHA-256 of the job's credential (server/security.py); "" for a job saved before
    #: credentials existed (its next resuming hello gets one).
    credential: str = ""
    #: Who created the job (the peer's address), for the per-peer session quota.
    creator: str = ""
    #: The LR the trainer trains at as of its last exchange (None: not known yet).
    lr: float | None = None
    last_client_id: str | None = None
    last_seq: int | None = None
    #: The reply (envelope dict) sent for ``(last_client_id, last_seq)``.
    last_reply: dict | None = None
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    requests: int = 0
    step: int = 0

    def to_state(self) -> dict:
        return {
            "format": STATE_FORMAT,
            "job_id": self.job_id,
            "tuner": self.tuner_name,
            "config": self.config,
            "hello_config": self.hello_config,
            "seed": self.seed,
            "status": self.status,
            "owner": self.owner,
            "credential": self.credential,
            "creator": self.creator,
            "lr": self.lr,
            "last": None
            if self.last_seq is None
            else {"client_id": self.last_client_id, "seq": self.last_seq, "reply": self.last_reply},
            "created": self.created,
            "updated": self.updated,
            "requests": self.requests,
            "step": self.step,
            "tuner_state": self.tuner.state_dict(),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any], make_tuner: Callable[..., Tuner] = build_tuner) -> "Session":
        """Rebuild a session (and its tuner, through ``make_tuner``: a tuner host's ``make``)
        from ``to_state()``; raises on anything missing."""
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"state format {state.get('format')!r} is not {STATE_FORMAT}")
        tuner = make_tuner(state["tuner"], state["config"], state["seed"], state["tuner_state"], job=state["job_id"])
        last = state["last"] or {}
        status = state["status"]
        if status not in (ACTIVE, FINISHED):
            raise ValueError(f"unknown session status {status!r}")
        return cls(
            job_id=state["job_id"],
            tuner_name=state["tuner"],
            config=dict(state["config"]),
            hello_config=dict(state["hello_config"]),
            seed=int(state["seed"]),
            tuner=tuner,
            status=status,
            owner=state["owner"],
            credential=str(state.get("credential", "")),
            creator=str(state.get("creator", "")),
            lr=_optional_float(state.get("lr")),
            last_client_id=last.get("client_id"),
            last_seq=last.get("seq"),
            last_reply=last.get("reply"),
            created=float(state["created"]),
            updated=float(state["updated"]),
            requests=int(state["requests"]),
            step=int(state["step"]),
        )

    def snapshot(self) -> bytes:
        """A deep, serialised copy to roll back to (tuners may alias lists in state_dict)."""
        return protocol.dumps(self.to_state())

    @classmethod
    def from_snapshot(cls, snap: bytes, make_tuner: Callable[..., Tuner] = build_tuner) -> "Session":
        return cls.from_state(protocol.loads(snap), make_tuner)


class SessionStore:
    """The sessions of one server, in memory and under ``state_dir``. ``tuners``: where the
    sessions' tuners run (:mod:`autolrs.server.tuner_host`; default: in this process); the
    store closes it with itself."""

    def __init__(self, state_dir: str | Path, fsync: bool = False, lock: bool = True, tuners: Any = None):
        self.state_dir = Path(state_dir).resolve()
        self.fsync = fsync
        self.tuners = tuners if tuners is not None else InProcessTuners()
        self.jobs_dir = self.state_dir / "jobs"
        # Private when made here: it holds the admin token and every job's config and log.
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.jobs_dir.mkdir(exist_ok=True)
        self._lock_fd: int | None = self._acquire_lock() if lock else None
        self.sessions: dict[str, Session] = {}
        #: Sessions unloaded from memory (idle past the lease; see server/leases.py): job id ->
        #: the status row they had. Their state.json stays, and get() loads them back.
        self.evicted: dict[str, dict] = {}
        # Guards moves between the two maps (callers serialise requests per job themselves).
        self._maps = threading.Lock()
        self._load_all()

    # --- the in-memory map -------------------------------------------------------------

    def get(self, job_id: str) -> Session | None:
        """The job's session; an evicted one is loaded back from its state.json."""
        session = self.sessions.get(job_id)
        if session is not None or job_id not in self.evicted:
            return session
        session = self._read(self.job_dir(job_id))
        with self._maps:
            self.evicted.pop(job_id, None)
            if session is not None:
                self.sessions[job_id] = session
        if session is not None:
            log.info("job %s is back: loaded its session from disk", job_id)
        return session

    def put(self, session: Session) -> None:
        with self._maps:
            self.sessions[session.job_id] = session
            self.evicted.pop(session.job_id, None)

    def discard(self, job_id: str) -> None:
        self.sessions.pop(job_id, None)

    def evict(self, job_id: str, row: dict) -> None:
        """Unload a session from memory (its state is on disk already), keeping its status row."""
        with self._maps:
            if self.sessions.pop(job_id, None) is not None:
                self.evicted[job_id] = row

    def listing(self) -> tuple[list[Session], dict[str, dict]]:
        """A consistent copy of (sessions in memory, evicted rows) for status."""
        with self._maps:
            return list(self.sessions.values()), dict(self.evicted)

    def __iter__(self) -> Iterator[Session]:
        return iter(sorted(self.sessions.values(), key=lambda s: s.job_id))

    def __len__(self) -> int:
        return len(self.sessions)

    # --- disk ------------------------------------------------------------------------------

    def job_dir(self, job_id: str) -> Path:
        # job ids are validated by the protocol (letters, digits, . _ -, no leading dot): path-safe.
        return self.jobs_dir / job_id

    def save(self, session: Session) -> None:
        """Write state.json atomically: a reader (or a restart after SIGKILL) sees old or new, never half."""
        data = protocol.dumps(session.to_state())
        directory = self.job_dir(session.job_id)
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / "state.json"
        tmp = directory / f"state.json.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(data)
            if self.fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, target)
        if self.fsync:  # make the rename itself durable
            fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def append_log(self, session: Session, record: Mapping[str, Any]) -> None:
        """Append one JSON line to the job's decisions.jsonl (NaN encoded the protocol's way)."""
        directory = self.job_dir(session.job_id)
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / "decisions.jsonl", "ab") as f:
            f.write(protocol.dumps(dict(record)) + b"\n")
            if self.fsync:
                f.flush()
                os.fsync(f.fileno())

    def _load_all(self) -> None:
        for directory in sorted(p for p in self.jobs_dir.iterdir() if p.is_dir()):
            for stale in directory.glob("state.json.tmp-*"):  # left by a crash mid-write
                stale.unlink(missing_ok=True)
            session = self._read(directory)
            if session is not None:
                self.sessions[session.job_id] = session
        if self.sessions:
            log.info("loaded %d session(s) from %s", len(self.sessions), self.state_dir)

    def _read(self, directory: Path) -> Session | None:
        """The session saved in ``directory``; None if there is none or it is damaged (then the
        file is moved aside and the job skipped)."""
        path = directory / "state.json"
        if not path.exists():
            return None
        try:
            session = Session.from_snapshot(path.read_bytes(), self.tuners.make)
            if session.job_id != directory.name:
                raise ValueError(f"holds job {session.job_id!r}, not {directory.name!r}")
        except Exception as exc:  # noqa: BLE001 - any damage: keep the file, skip the job
            aside = path.with_name(f"state.json.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns() % 10**9}")
            log.warning(
                "cannot load %s (%s: %s); moved it to %s and continue without job %s",
                path,
                type(exc).__name__,
                exc,
                aside.name,
                directory.name,
            )
            try:
                os.replace(path, aside)
            except OSError as move_exc:
                log.warning("could not move %s aside: %s", path, move_exc)
            return None
        return session

    def _acquire_lock(self) -> int | None:
        try:
            import fcntl
        except ImportError:  # not on POSIX: run without the guard
            return None
        fd = os.open(self.state_dir / "server.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StateDirLocked(f"state dir {self.state_dir} is in use by another autolrs server") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return fd

    def close(self) -> None:
        """Release the state-dir lock and end the tuner processes (sessions are already on disk:
        every change is saved)."""
        self.tuners.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def observation_summary(losses: list[float], evals: list) -> dict:
    """A compact account of a report for the decisions log."""
    finite = [x for x in losses if math.isfinite(x)]
    return {
        "n_losses": len(losses),
        "n_finite": len(finite),
        "mean_loss": sum(finite) / len(finite) if finite else None,
        "last_loss": losses[-1] if losses else None,
        "evals": [list(e) for e in evals],
    }
