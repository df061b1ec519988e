"""Independent copies of what a checkpoint should bring back, and their exact comparison."""

from __future__ import annotations

import copy
from typing import Any

import torch

__all__ = ["assert_bitwise_equal", "snapshot"]


def snapshot(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: Any = None) -> dict:
    """Independent copies of the model's, the optimizer's (and a GradScaler's) state."""
    snap = {
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "optimizer": copy.deepcopy(optimizer.state_dict()),
    }
    if scaler is not None:
        snap["scaler"] = copy.deepcopy(scaler.state_dict())
    return snap


def assert_bitwise_equal(a: Any, b: Any, path: str = "") -> None:
    """Recursive exact comparison of nested dicts/lists of tensors and plain values: tensors
    must match in dtype, shape, device and every byte (so -0.0 != 0.0 and NaN payloads count)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), f"{path}: tensor vs {type(b).__name__}"
        assert a.dtype == b.dtype and a.shape == b.shape and a.device == b.device, f"{path}: meta differs"
        assert torch.equal(_bytes(a), _bytes(b)), f"{path}: values differ (bitwise)"
        return
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{path}: keys {sorted(map(str, a))} vs {sorted(map(str, b))}"
        for k in a:
            assert_bitwise_equal(a[k], b[k], f"{path}.{k}")
        return
    if isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{path}: length differs"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_bitwise_equal(x, y, f"{path}[{i}]")
        return
    assert a == b or (a != a and b != b), f"{path}: {a!r} != {b!r}"


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.detach().reshape(-1).contiguous().view(torch.uint8)
