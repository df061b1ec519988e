"""Helpers importable from any test folder (a unique module name: every folder's conftest.py
is a module called ``conftest``, so tests must not import from it)."""

from __future__ import annotations

import torch


def make_mlp(seed: int = 0, hidden: int = 32) -> torch.nn.Module:
    """A 64-hidden-10 MLP for scikit-learn's digits, seeded."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10))
