"""The ``probe`` action: one-step loss changes at several LRs on one subsample.

From a checkpoint slot, for one batch (whatever ``probe_fn`` evaluates):

1. restore the slot; ``loss_before = probe_fn()``; backward; keep a copy of the gradients;
2. per LR: restore the slot (model, optimizer moments and step counts, scaler, RNG), put the
   kept gradients back, set the LR, ``optimizer.step()``, ``loss_after = probe_fn()`` under
   ``no_grad``;
3. restore the slot once more and set the LR back, so the caller sees the slot's state.

The gradient is computed once per subsample (autolrtuner does the same): every LR starts from
the same weights and the same batch, so it is the same gradient, and each probe costs a restore,
a step and a forward pass. Unlike autolrtuner, the optimizer state is restored before every
step, so Adam's moments and bias correction are those of the checkpoint each time. Losses stay
tensors until the end: one device-to-host copy per probe action.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from autolrs.callbacks.lr import write_lrs
from autolrs.callbacks.state import CheckpointStore

__all__ = ["run_probes"]


def run_probes(
    store: CheckpointStore,
    slot: str,
    lrs: Sequence[float],
    probe_fn: Callable[[], Any],
    set_lr: Callable[[float], None],
) -> list[list[float]] | None:
    """``[loss_before, loss_after]`` per LR of ``lrs`` (see the module doc), or None when
    ``slot`` does not exist. ``set_lr`` sets the base LR (the callback's, keeping the param
    groups' ratios). The LRs in force before the call are put back exactly at the end, also
    when ``probe_fn`` raises; the gradients are left as None."""
    if slot not in store:
        return None
    optimizer = store.optimizer
    saved = [g["lr"].clone() if isinstance(g["lr"], torch.Tensor) else g["lr"] for g in optimizer.param_groups]
    lr_now = float(saved[0]) if saved else 0.0
    params = [p for group in optimizer.param_groups for p in group["params"]]
    try:
        store.restore(slot)
        optimizer.zero_grad(set_to_none=True)
        loss = probe_fn()
        _check_loss(loss)
        loss.backward()
        values = [loss.detach().float().mean()]
        grads = [None if p.grad is None else p.grad.detach().clone() for p in params]
        for lr in lrs:
            store.restore(slot)
            set_lr(lr)
            for p, g in zip(params, grads):
                if g is None:
                    p.grad = None
                elif p.grad is None:
                    p.grad = g.clone()
                else:
                    p.grad.copy_(g)  # an optimizer may have changed it in place
            optimizer.step()
            with torch.no_grad():
                values.append(torch.as_tensor(probe_fn()).detach().float().mean())
    finally:
        store.restore(slot)
        set_lr(lr_now)  # the caller's record of the LR ...
        write_lrs(optimizer, saved)  # ... and every group's exact value
        optimizer.zero_grad(set_to_none=True)
    # One copy to the host, through float64 so each value becomes the same Python float.
    floats = torch.stack([v.to(values[0].device) for v in values]).double().cpu().tolist()
    return [[floats[0], after] for after in floats[1:]]


def _check_loss(loss: Any) -> None:
    if not isinstance(loss, torch.Tensor) or not loss.requires_grad or loss.numel() != 1:
        got = (
            type(loss).__name__
            if not isinstance(loss, torch.Tensor)
            else f"a tensor of shape {tuple(loss.shape)}, requires_grad={loss.requires_grad}"
        )
        raise TypeError(
            "probe_fn must return the loss of the current batch: a one-element tensor with its graph "
            f"(requires_grad), got {got}"
        )
