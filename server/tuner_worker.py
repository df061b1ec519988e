"""The loop of a tuner process: tuners kept in memory, one call at a time, answered with a view.

The server (:mod:`autolrs.server.tuner_host`) sends requests over a pipe; this loop carries them
out in order and answers each. A request is ``(drops, op, key, payload)``: first the tuners in
``drops`` are forgotten (their sessions are gone from the server), then

* ``("make", key, (name, config, seed, state))`` builds a tuner (and loads ``state``);
* ``("call", key, (method, args, kwargs))`` calls one of its methods.

The answer is ``(outcome, view)``: the call's result, or the exception it raised, and the
tuner's *view* afterwards: what its side-effect-free methods return now (:data:`PURE`) and its
:data:`ATTRIBUTES`, so the server reads them without asking again. Each value travels pickled on
its own, so the server keeps compact bytes and hands out a fresh copy on every read. Pickle is
safe here: both ends are the server and the children it started; the wire to clients stays JSON.
"""

from __future__ import annotations

import os
import pickle
import signal
import traceback
from typing import Any

from autolrs.tuners import make_tuner

#: Methods the tuner contract (and the wrappers around tuners) declare free of side effects;
#: each one a tuner has is called after every change and its value sent back.
PURE = ("ask", "ask_next", "in_search", "state_dict", "summary", "lr_bounds")
#: Plain attributes the server reads.
ATTRIBUTES = ("notices",)

#: What the first message of a new process says: it is ready (its imports are done).
READY = "ready"


def main(conn: Any) -> None:
    """Serve requests from ``conn`` until the server closes it (or dies)."""
    # Ctrl-C in a terminal signals the whole process group: the server decides when this ends
    # (it closes the pipe), so a stopping server still gets its in-flight answers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _one_blas_thread()
    tuners: dict[int, Any] = {}
    conn.send((READY, os.getpid()))
    while True:
        try:
            drops, op, key, payload = conn.recv()
        except (EOFError, OSError):  # the server closed the pipe, or is gone
            return
        for dropped in drops:
            tuners.pop(dropped, None)
        try:
            if op == "make":
                name, config, seed, state = payload
                tuner = make_tuner(name, config, seed)
                if state is not None:
                    tuner.load_state_dict(state)
                tuners[key] = tuner
                outcome = (True, pickle.dumps(None))
            elif op == "call":
                method, args, kwargs = payload
                tuner = tuners[key]
                outcome = (True, pickle.dumps(getattr(tuner, method)(*args, **kwargs)))
            else:
                raise ValueError(f"unknown request {op!r}")
        except Exception as exc:  # noqa: BLE001 - the server raises it where the call was made
            outcome = (False, _pickled_error(exc))
        held = tuners.get(key)
        try:
            conn.send((outcome, None if held is None else view(held)))
        except (BrokenPipeError, OSError):
            return


def view(tuner: Any) -> dict[str, tuple[bool, bytes]]:
    """``{name: (ok, pickled value or exception)}`` for each of :data:`PURE` the tuner has
    (called now) and each of :data:`ATTRIBUTES`."""
    out: dict[str, tuple[bool, bytes]] = {}
    for name in PURE:
        method = getattr(tuner, name, None)
        if method is None:
            continue
        try:
            out[name] = (True, pickle.dumps(method()))
        except Exception as exc:  # noqa: BLE001 - raised when the server reads it
            out[name] = (False, _pickled_error(exc))
    for name in ATTRIBUTES:
        if hasattr(tuner, name):
            out[name] = (True, pickle.dumps(getattr(tuner, name)))
    return out


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a tuner process (its ``__cause__`` on the server)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _pickled_error(exc: Exception) -> bytes:
    """``exc`` pickled with its traceback as cause; a RuntimeError with its message when the
    exception does not survive pickling (a constructor that takes other arguments)."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        blob = pickle.dumps(exc)
        pickle.loads(blob)
    except Exception:  # noqa: BLE001
        exc = RuntimeError(f"{type(exc).__name__}: {exc}")
        blob = pickle.dumps(exc)
    return pickle.dumps((blob, text))


def raise_error(blob: bytes) -> None:
    """Raise the exception :func:`_pickled_error` packed, with the tuner process's traceback."""
    exc_blob, text = pickle.loads(blob)
    exc = pickle.loads(exc_blob)
    raise exc from RemoteTraceback(f"\n\nin the tuner process:\n{text}")


def _one_blas_thread() -> None:
    """One BLAS/OpenMP thread per process: the server runs a process per core, and a GP fit's
    matrices are far too small to gain from more."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # scikit-learn requires it; without it the libraries' defaults stay
        return
    threadpool_limits(1)
