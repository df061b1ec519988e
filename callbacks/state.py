"""Checkpoints of the training state, restored bitwise: model, optimizer, GradScaler, RNG.

A checkpoint is a real copy, never a reference: ``model.state_dict()`` and
``optimizer.state_dict()`` hand out the live tensors, which the next optimizer step changes in
place. In memory each tensor is cloned and the optimizer state deep-copied; on disk each slot
is one ``torch.save`` file in a private temporary directory. ``"cpu"`` keeps each slot in host
memory, copied asynchronously from CUDA and shard by shard under FSDP2
(:mod:`~autolrs.callbacks.host_slots`).

Restoring deep-copies again before ``optimizer.load_state_dict``: that method keeps the tensors
it is given whenever they already have the parameter's dtype and device (``.to()`` is then a
no-op), so handing it the stored copy would let the next in-place update corrupt the
checkpoint, and a second restore from the same slot would be wrong.

A process killed before it could clean up (SIGKILL, a power cut) leaves its disk checkpoints
behind: their folder's name carries the host and the process id
(``autolrs-ckpt-<host>-<pid>-<random>``), and every new store removes the folders of this host
whose process is gone (:func:`sweep_dead`).
"""

from __future__ import annotations

import copy
import logging
import os
import random
import re
import shutil
import socket
import tempfile
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autolrs.callbacks.host_slots import from_host_slot, host_slot

__all__ = ["CheckpointStore", "sweep_dead"]

log = logging.getLogger(__name__)

STORAGES = ("memory", "cpu", "disk")
PREFIX = "autolrs-ckpt-"


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", socket.gethostname())[:64] or "host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    except OverflowError:  # not a process id at all
        return False
    return True


def sweep_dead(directory: str | os.PathLike | None = None) -> list[str]:
    """Remove the checkpoint folders in ``directory`` (default: the temp dir) that processes of
    this host left behind when they died without cleaning up; returns their paths. A folder of
    a live process, of another host (a shared file system) or of another user stays."""
    root = Path(tempfile.gettempdir() if directory is None else directory)
    pattern = re.compile(re.escape(PREFIX + _host()) + r"-([0-9]+)-")
    removed: list[str] = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = pattern.match(entry.name)
        if match is None or _alive(int(match.group(1))) or not entry.is_dir() or entry.is_symlink():
            continue
        shutil.rmtree(entry, ignore_errors=True)
        if not entry.exists():
            removed.append(str(entry))
    if removed:
        log.info("removed %d checkpoint folder(s) of ended processes in %s", len(removed), root)
    return removed


class CheckpointStore:
    """Named checkpoint slots of one model and optimizer (plus an optional GradScaler and RNG).

    ``storage="memory"`` keeps copies on the tensors' own devices (fast; costs a copy of the
    model and optimizer state per slot). ``storage="cpu"`` keeps them in host memory (pinned
    for CUDA tensors, copied asynchronously; on a CPU-only model it is the same as
    ``"memory"``). ``storage="disk"`` writes one file per slot in a private folder
    ``autolrs-ckpt-<host>-<pid>-<random>`` under ``directory`` (default: the temp dir; made if
    missing); the folder is created at the first save and removed by :meth:`close`, or at
    garbage collection / interpreter exit if ``close`` is never called, or, after a crash, by
    the next store made on this host (:func:`sweep_dead`).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: Any = None,
        include_rng: bool = False,
        storage: str = "memory",
        directory: str | os.PathLike | None = None,
    ):
        if storage not in STORAGES:
            raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
        self.model = model
        self.optimizer = optimizer
        self.scaler = scaler
        self.include_rng = bool(include_rng)
        self.storage = storage
        self.directory = None if directory is None else os.fspath(directory)
        self._memory: dict[str, dict] = {}
        self._files: dict[str, str] = {}
        self._counter = 0
        self._tmpdir: str | None = None
        self._finalizer: weakref.finalize | None = None
        self._closed = False
        sweep_dead(self.directory)

    # --- public ------------------------------------------------------------------------

    @property
    def slots(self) -> list[str]:
        return list(self._files) if self.storage == "disk" else list(self._memory)

    def __contains__(self, slot: str) -> bool:
        return slot in self._memory or slot in self._files

    def __len__(self) -> int:
        return len(self._memory) + len(self._files)

    @property
    def path(self) -> str | None:
        """The temporary directory of disk storage (None before the first save, or in memory)."""
        return self._tmpdir

    def save(self, slot: str) -> None:
        """Copy the current state into ``slot`` (replacing what it held)."""
        self._check_open()
        if self.storage == "memory":
            self._memory[slot] = self._capture()
            return
        if self.storage == "cpu":
            self._memory[slot] = self._capture_to_host()
            return
        path = self._files.get(slot)
        if path is None:
            self._counter += 1
            path = os.path.join(self._ensure_dir(), f"slot-{self._counter}.pt")
        tmp = path + ".tmp"
        try:
            torch.save(self._capture_for_disk(), tmp)
            os.replace(tmp, path)
        except BaseException:
            _remove(tmp)
            raise
        self._files[slot] = path

    def restore(self, slot: str) -> bool:
        """Load ``slot`` back, bitwise; False (and nothing changed) if there is no such slot."""
        self._check_open()
        if self.storage == "memory":
            saved = self._memory.get(slot)
            if saved is None:
                return False
            # A deep copy: load_state_dict may keep the tensors it is given (see module doc).
            self._apply(copy.deepcopy(saved))
            return True
        if self.storage == "cpu":
            saved = self._memory.get(slot)
            if saved is None:
                return False
            self._apply(from_host_slot(saved))
            return True
        path = self._files.get(slot)
        if path is None:
            return False
        # Freshly loaded tensors belong to nobody else: no copy needed.
        self._apply(_from_disk(torch.load(path, weights_only=True)))
        return True

    def discard(self, slot: str) -> None:
        """Free ``slot`` (no-op if it does not exist)."""
        self._memory.pop(slot, None)
        path = self._files.pop(slot, None)
        if path is not None:
            _remove(path)

    def close(self) -> None:
        """Drop every slot and remove the temporary directory (idempotent)."""
        self._closed = True
        self._memory.clear()
        self._files.clear()
        if self._finalizer is not None:
            self._finalizer()  # runs at most once

    def __enter__(self) -> "CheckpointStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- capture / apply ---------------------------------------------------------------

    def _capture(self) -> dict:
        state: dict[str, Any] = {
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
        }
        if self.scaler is not None:
            state["scaler"] = copy.deepcopy(self.scaler.state_dict())
        if self.include_rng:
            state["rng"] = _rng_state()
        return state

    def _capture_to_host(self) -> dict:
        live = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}
        extra: dict[str, Any] = {}
        if self.scaler is not None:
            extra["scaler"] = copy.deepcopy(self.scaler.state_dict())
        if self.include_rng:
            extra["rng"] = _rng_state()
        return host_slot(live, extra)

    def _capture_for_disk(self) -> dict:
        # torch.save serialises the tensors as they are at this moment: no clone needed.
        state: dict[str, Any] = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        if self.include_rng:
            state["rng"] = _to_disk_rng(_rng_state())
        return state

    def _apply(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and "scaler" in state and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        if self.include_rng and "rng" in state:
            _set_rng_state(state["rng"])

    # --- files -------------------------------------------------------------------------

    def _ensure_dir(self) -> str:
        if self._tmpdir is None:
            if self.directory is not None:
                os.makedirs(self.directory, exist_ok=True)
            self._tmpdir = tempfile.mkdtemp(prefix=f"{PREFIX}{_host()}-{os.getpid()}-", dir=self.directory)
            # Removes the files even if close() is never called (GC or interpreter exit).
            self._finalizer = weakref.finalize(self, shutil.rmtree, self._tmpdir, ignore_errors=True)
        return self._tmpdir

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("checkpoint store is closed")


# --- RNG states ----------------------------------------------------------------------------


def _rng_state() -> dict:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_disk_rng(state: dict) -> dict:
    """numpy's state holds an ndarray, which ``torch.load(weights_only=True)`` refuses: store
    its key array as a tensor and rebuild the tuple on load."""
    kind, keys, pos, has_gauss, cached = state["numpy"]
    out = dict(state)
    out["numpy"] = {
        "kind": kind,
        "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }
    return out


def _from_disk(state: dict) -> dict:
    rng = state.get("rng")
    if rng is not None and isinstance(rng.get("numpy"), dict):
        n = rng["numpy"]
        rng["numpy"] = (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    return state


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
