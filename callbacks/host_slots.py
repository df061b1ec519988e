"""Checkpoint slots in host memory (:class:`~autolrs.callbacks.state.CheckpointStore` with
``storage="cpu"``).

A CUDA tensor is copied into pinned memory with ``non_blocking=True``: the copy runs on the
stream while training goes on (no host sync), so a GPU holds no snapshot. A slot remembers the
device each tensor came from and an event recorded after its copies; a restore makes the current
stream wait for that event (the device, not the host) and copies each tensor back the same way.
Under FSDP2 the state dicts hold DTensors: each rank keeps its own shards (the local tensors) and
a restore rebuilds each DTensor on its mesh.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

__all__ = ["from_host_slot", "host_slot"]

DTensor: Any
try:  # FSDP2's sharded tensors (torch >= 2.4 with torch.distributed)
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover - torch without distributed support
    DTensor = None


def host_slot(live: dict[str, Any], extra: dict[str, Any]) -> dict:
    """A slot of ``live`` (the model's and optimizer's state dicts, by name) with every tensor
    in host memory, where each tensor came from, and the event its copies end at; ``extra``
    (the GradScaler's state, the RNG's) is stored as given."""
    state: dict[str, Any] = {k: _map(v, _host_copy) for k, v in live.items()}
    devices = {k: _map(v, lambda t: t.device) for k, v in live.items()}
    state.update(extra)
    copied = None
    if torch.cuda.is_available() and torch.cuda.is_initialized() and _any_cuda(devices):
        copied = torch.cuda.Event()
        copied.record()  # after the copies on the current stream
    return {"state": state, "devices": devices, "copied": copied}


def from_host_slot(slot: dict) -> dict:
    """The state of a host slot, ready to load: the copies into it waited for on the device
    (not the host), its tensors back on their devices, fresh (never shared with the slot:
    ``load_state_dict`` may keep what it is given)."""
    if slot["copied"] is not None:
        slot["copied"].wait()  # the current stream waits for the snapshot's copies
    state = slot["state"]
    out = {k: copy.deepcopy(v) for k, v in state.items() if k not in slot["devices"]}
    for k, devices in slot["devices"].items():
        out[k] = _back(state[k], devices)
    return out


class _Shard:
    """A DTensor in a host slot: this rank's shard (a plain tensor) and how to rebuild it."""

    def __init__(self, t: Any, local: torch.Tensor):
        self.local = local
        self.mesh, self.placements, self.shape, self.stride = t.device_mesh, t.placements, t.shape, t.stride()


def _map(obj: Any, fn: Any) -> Any:
    """``obj`` with ``fn`` applied to each tensor in its dicts, lists and tuples; a DTensor's
    (FSDP2) local shard is what ``fn`` gets, so each rank keeps its own shards."""
    if DTensor is not None and isinstance(obj, DTensor):
        return _Shard(obj, fn(obj.to_local()))
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _map(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map(v, fn) for v in obj)
    return copy.deepcopy(obj)


def _host_copy(t: torch.Tensor) -> torch.Tensor:
    """A host copy of ``t``: pinned and asynchronous for a CUDA tensor, a clone otherwise."""
    t = t.detach()
    if t.device.type != "cuda":
        return t.clone()
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t, non_blocking=True)
    return host


def _any_cuda(devices: Any) -> bool:
    if isinstance(devices, _Shard):
        return _any_cuda(devices.local)
    if isinstance(devices, torch.device):
        return devices.type == "cuda"
    if isinstance(devices, dict):
        return any(_any_cuda(v) for v in devices.values())
    if isinstance(devices, (list, tuple)):
        return any(_any_cuda(v) for v in devices)
    return False


def _back(saved: Any, devices: Any) -> Any:
    """Fresh tensors from a host slot, each on the device it was saved from."""
    if isinstance(saved, _Shard):
        return DTensor.from_local(
            _back(saved.local, devices.local),
            saved.mesh,
            saved.placements,
            run_check=False,
            shape=saved.shape,
            stride=saved.stride,
        )
    if isinstance(saved, torch.Tensor):
        if devices.type == "cuda":
            return saved.to(devices, non_blocking=True)
        return saved.clone()
    if isinstance(saved, dict):
        return {k: _back(v, devices[k]) for k, v in saved.items()}
    if isinstance(saved, (list, tuple)):
        return type(saved)(_back(v, d) for v, d in zip(saved, devices))
    return copy.deepcopy(saved)
