"""One lock per key (a job id), created on first use and dropped when nobody holds or waits for it,
so requests naming jobs that do not exist leave nothing behind."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator


class KeyedLocks:
    def __init__(self) -> None:
        self._guard = threading.Lock()
        # key -> [lock, number of threads holding or waiting for it]
        self._locks: dict[str, list] = {}

    def _enter(self, key: str) -> threading.Lock:
        with self._guard:
            entry = self._locks.get(key)
            if entry is None:
                entry = self._locks[key] = [threading.Lock(), 0]
            entry[1] += 1
            return entry[0]

    def _leave(self, key: str) -> None:
        with self._guard:
            entry = self._locks[key]
            entry[1] -= 1
            if entry[1] == 0:
                del self._locks[key]

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        """Hold ``key``'s lock for the ``with`` block (waits while another thread holds it)."""
        lock = self._enter(key)
        try:
            with lock:
                yield
        finally:
            self._leave(key)

    @contextmanager
    def try_hold(self, key: str) -> Iterator[bool]:
        """Hold ``key``'s lock if it is free now; yields whether it was taken (never waits)."""
        lock = self._enter(key)
        taken = lock.acquire(blocking=False)
        try:
            yield taken
        finally:
            if taken:
                lock.release()
            self._leave(key)

    def __len__(self) -> int:
        return len(self._locks)
