"""Helpers importable from any test folder (a unique module name: every folder's conftest.py
is a module called ``conftest``, so tests must not import from it)."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def make_mlp(seed: int = 0, hidden: int = 32) -> torch.nn.Module:
    """A 64-hidden-10 MLP for scikit-learn's digits, seeded."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10))


def torch_scheduler_lrs(make_scheduler, lr: float, steps: int) -> list[float]:
    """The LR torch's scheduler gives each of ``steps`` optimizer steps (stepped once per step)."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = make_scheduler(optimizer)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def assert_bitwise_equal(a, b, path: str = "") -> None:
    """Recursive exact comparison of nested dicts/lists of tensors and plain values."""
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


def cifar_subset_dir() -> Path:
    """The CIFAR-10 subset the example tests train on: ``$CIFAR10_DIR``, else the shared data
    folder next to the checkout, else the one under /work (a checkout cloned elsewhere)."""
    candidates = [Path(os.environ["CIFAR10_DIR"])] if os.environ.get("CIFAR10_DIR") else []
    candidates += [Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar-10-subset-py",
                   Path("/work/shared/data/cifar-10-subset-py")]
    for folder in candidates:
        if (folder / "data_batch_1").is_file():
            return folder
    return candidates[0]
