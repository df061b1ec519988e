"""Alrao's learning rates: one random LR per unit of the pre-classifier, log-spaced LRs for the
classifier copies.

A "unit" is what the original (leonardblier/alrao, ``generator_randomlr_neurons``) calls a
feature: an output unit of a Linear layer or a filter of a convolution (its bias shares the LR), a
column of an Embedding, a gate row of an LSTM/GRU/RNN matrix (``bias_ih`` shares ``weight_ih``'s
rows, ``bias_hh`` shares ``weight_hh``'s), and a single scalar for any other parameter (BatchNorm,
LayerNorm, ...). Giving a whole unit one LR (rather than each weight) is the paper's point: a unit
with a too-large LR dies or saturates alone instead of spreading noise into every unit.

The LR tensors are returned in *broadcastable* shapes (``(out, 1, 1, 1)`` for a conv weight,
``(1, dim)`` for an embedding): the optimizer multiplies the update by them, so memory is one
number per unit, not one per weight.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["log_uniform", "classifier_lrs", "sample_unit_lrs", "sample_tensor_lrs", "unit_lr_kind"]


def log_uniform(n: int, lr_min: float, lr_max: float, generator: torch.Generator) -> torch.Tensor:
    """``n`` LRs ``exp(U (ln lr_max - ln lr_min) + ln lr_min)``, U ~ Uniform[0, 1), in float64 on
    the CPU (the generator's device), so a seed gives the same LRs on any accelerator."""
    _check_interval(lr_min, lr_max)
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    lo, hi = math.log(lr_min), math.log(lr_max)
    return torch.exp(u * (hi - lo) + lo)


def classifier_lrs(n: int, lr_min: float, lr_max: float) -> list[float]:
    """LRs of ``n`` classifier copies, log-spaced over [lr_min, lr_max] with both ends included:
    ``exp(ln lr_min + k/(n-1) (ln lr_max - ln lr_min))``; a single copy gets ``lr_min`` (as in
    the original)."""
    _check_interval(lr_min, lr_max)
    if n < 1:
        raise ValueError(f"need at least one classifier, got {n}")
    if n == 1:
        return [float(lr_min)]
    lo, hi = math.log(lr_min), math.log(lr_max)
    lrs = [math.exp(lo + k / (n - 1) * (hi - lo)) for k in range(n)]
    lrs[0], lrs[-1] = float(lr_min), float(lr_max)  # exact ends, not exp(log(x)) round-trips
    return lrs


def unit_lr_kind(module: nn.Module, name: str) -> str:
    """How the LR of parameter ``name`` (a direct parameter of ``module``) is shared:
    'row' (one per index of dim 0), 'column' (one per index of dim 1) or 'scalar'."""
    if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) and name in ("weight", "bias"):
        return "row"
    if isinstance(module, nn.Embedding) and name == "weight":
        return "column"
    if isinstance(module, nn.RNNBase) and name.startswith(("weight_", "bias_")):
        return "row"
    return "scalar"


def _rnn_weight_for_bias(name: str) -> str:
    # bias_ih_l0_reverse -> weight_ih_l0_reverse: the bias of a gate row shares that row's LR.
    return "weight_" + name[len("bias_") :]


def sample_unit_lrs(
    module: nn.Module, lr_min: float, lr_max: float, generator: torch.Generator, per: str = "unit"
) -> Iterator[tuple[nn.Parameter, torch.Tensor]]:
    """Yield ``(parameter, lr)`` for every parameter of ``module`` in ``module.parameters()``
    order (shared parameters once), ``lr`` a float64 CPU tensor broadcastable to the parameter.

    ``per='unit'`` is Alrao's per-feature sampling (see the module docstring); ``per='weight'``
    gives every scalar its own LR (the original's ``generator_randomlr_weights``).
    """
    if per not in ("unit", "weight"):
        raise ValueError(f"per must be 'unit' or 'weight', got {per!r}")
    seen: set[int] = set()
    for mod in module.modules():
        # The LR vector of each weight, kept for the biases that share it.
        row_lrs: dict[str, torch.Tensor] = {}
        for name, p in mod._parameters.items():
            if p is None or id(p) in seen:
                continue
            seen.add(id(p))
            kind = "scalar" if per == "weight" else unit_lr_kind(mod, name)
            if kind == "scalar":
                lr = log_uniform(p.numel(), lr_min, lr_max, generator).view(p.shape)
            elif kind == "column":
                lr = log_uniform(p.shape[1], lr_min, lr_max, generator).view(1, -1)
            else:
                shared = None
                if name == "bias":
                    shared = row_lrs.get("weight")
                elif name.startswith("bias_"):
                    shared = row_lrs.get(_rnn_weight_for_bias(name))
                vec = (
                    shared
                    if shared is not None and shared.numel() == p.shape[0]
                    else log_uniform(p.shape[0], lr_min, lr_max, generator)
                )
                row_lrs[name] = vec
                lr = vec.view((p.shape[0],) + (1,) * (p.dim() - 1))
            yield p, lr


def sample_tensor_lrs(
    shape: torch.Size | tuple[int, ...], lr_min: float, lr_max: float, generator: torch.Generator, per: str = "unit"
) -> torch.Tensor:
    """LRs for a tensor known only by its shape (no module to say what a unit is): one per index
    of its first dimension, broadcastable (``(n, 1, ...)``), one for a 0-d tensor; ``per='weight'``:
    one per scalar."""
    if per not in ("unit", "weight"):
        raise ValueError(f"per must be 'unit' or 'weight', got {per!r}")
    shape = tuple(shape)
    if per == "weight" or len(shape) == 0:
        return log_uniform(math.prod(shape), lr_min, lr_max, generator).view(shape)
    return log_uniform(shape[0], lr_min, lr_max, generator).view((shape[0],) + (1,) * (len(shape) - 1))


def _check_interval(lr_min: float, lr_max: float) -> None:
    if not (0 < lr_min <= lr_max and math.isfinite(lr_max)):
        raise ValueError(f"need 0 < lr_min <= lr_max < inf, got [{lr_min}, {lr_max}]")
