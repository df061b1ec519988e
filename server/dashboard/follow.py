"""Follow append-only JSON-lines files (history journals, decision logs) cheaply: each read
applies only the lines appended since the previous one.

A file that was replaced (a compacted journal: a new inode, or first bytes that differ, since
inode numbers are reused) is read again. A line still being written (no newline yet) waits for
the next read; a line that does not decode is skipped.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

from autolrs.wire import protocol

log = logging.getLogger(__name__)

#: How much of a file's first line identifies it (with its inode).
IDENTITY_BYTES = 64


class Follower:
    """``get(path)`` is ``fold`` applied to every record of the file, in order, starting from
    ``initial()``, computed incrementally and cached (the last ``cache_files`` files).

    ``tail_bytes``: a file seen for the first time is read from that far before its end (its
    first, cut line skipped) instead of from its start; when the records there leave the state
    ``empty(state)``, the whole file is read. None: always from the start.
    """

    def __init__(
        self,
        initial: Callable[[], Any],
        fold: Callable[[Any, Any], Any],
        *,
        tail_bytes: int | None = None,
        empty: Callable[[Any], bool] = lambda state: False,
        cache_files: int = 64,
    ):
        self.initial, self.fold, self.tail_bytes, self.empty = initial, fold, tail_bytes, empty
        self.cache_files = cache_files
        # path -> (identity, offset read, state, stat key when last read)
        self._cache: OrderedDict[Path, tuple[tuple, int, Any, tuple]] = OrderedDict()
        self._guard = threading.Lock()

    def get(self, path: str | Path, view: Callable[[Any], Any] = lambda state: state) -> Any:
        """``view(state)`` of the file at ``path`` (computed under the lock: copy what you keep);
        ``view(initial())`` when there is no file."""
        path = Path(path)
        with self._guard:
            cached = self._cache.get(path)
            try:
                st = os.stat(path)
                if cached is not None and cached[3] == (st.st_ino, st.st_size, st.st_mtime_ns):
                    self._cache.move_to_end(path)  # unchanged since the last read
                    return view(cached[2])
                f = open(path, "rb")
            except FileNotFoundError:
                self._cache.pop(path, None)
                return view(self.initial())
            with f:
                st = os.fstat(f.fileno())
                size, key = st.st_size, (st.st_ino, st.st_size, st.st_mtime_ns)
                identity = (st.st_ino, f.read(IDENTITY_BYTES))
                if cached is not None and cached[0] == identity and cached[1] <= size:
                    _, offset, state, _ = cached
                    state = self._read(f, offset, state)
                else:
                    start = 0 if self.tail_bytes is None else max(0, size - self.tail_bytes)
                    state = self._read(f, start, self.initial(), cut=start > 0)
                    if start > 0 and self.empty(state[1]):
                        state = self._read(f, 0, self.initial())
                offset, state = state
            self._cache[path] = (identity, offset, state, key)
            self._cache.move_to_end(path)
            while len(self._cache) > self.cache_files:
                self._cache.popitem(last=False)
            return view(state)

    def _read(self, f, offset: int, state: Any, cut: bool = False) -> tuple[int, Any]:
        """Apply the complete lines from ``offset`` on; returns (the offset after them, state)."""
        f.seek(offset)
        data = f.read()
        end = data.rfind(b"\n") + 1  # a line still being written is read next time
        lines = data[:end].split(b"\n")
        if cut and lines:
            lines = lines[1:]  # the line the offset fell into
        for line in lines:
            if not line.strip():
                continue
            try:
                record = protocol.loads(line)
            except protocol.ProtocolError:
                log.warning("skipped an unreadable line of %s", f.name)
                continue
            try:
                state = self.fold(state, record)
            except Exception as exc:  # noqa: BLE001 - one damaged record loses itself, not the file
                log.warning("skipped a damaged record of %s (%s: %s)", f.name, type(exc).__name__, exc)
        return offset + end, state
