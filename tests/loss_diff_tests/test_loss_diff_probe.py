"""run_probes in process: LRs and state put back exactly, also when probe_fn fails; bad input."""

from __future__ import annotations

import copy

import pytest
import torch

from autolrs.callbacks.probe import run_probes
from autolrs.callbacks.state import CheckpointStore

from autolrs.testing.training import make_mlp

F = torch.nn.functional


def setup(digits):
    x, y = digits
    model = make_mlp()
    optimizer = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.1},
                                 {"params": model[2].parameters(), "lr": 0.1 / 3}], momentum=0.9)
    optimizer.zero_grad()
    F.cross_entropy(model(x[:64]), y[:64]).backward()
    optimizer.step()
    store = CheckpointStore(model, optimizer)
    store.save("s")
    return model, optimizer, store, x[64:192], y[64:192]


def base_set_lr(optimizer):
    def set_lr(lr):
        optimizer.param_groups[0]["lr"], optimizer.param_groups[1]["lr"] = lr, lr / 3
    return set_lr


def test_probes_give_the_one_step_change_and_put_everything_back(digits):
    model, optimizer, store, xb, yb = setup(digits)
    before = copy.deepcopy({"m": model.state_dict(), "o": optimizer.state_dict()})
    pairs = run_probes(store, "s", [0.0, 0.05, 0.5], lambda: F.cross_entropy(model(xb), yb), base_set_lr(optimizer))
    assert len(pairs) == 3 and len({p[0] for p in pairs}) == 1
    with torch.no_grad():
        assert pairs[0][0] == pytest.approx(F.cross_entropy(model(xb), yb).item(), rel=1e-6)
    assert pairs[1][1] < pairs[0][0]  # a small step on the same batch lowers its loss
    after = {"m": model.state_dict(), "o": optimizer.state_dict()}
    for k in before["m"]:
        assert torch.equal(before["m"][k], after["m"][k])
    assert after["o"]["param_groups"] == before["o"]["param_groups"]  # LRs exactly as they were
    assert all(p.grad is None for p in model.parameters())


def test_a_failing_probe_fn_leaves_the_state_restored(digits):
    model, optimizer, store, xb, yb = setup(digits)
    before = copy.deepcopy(model.state_dict())
    calls = []

    def probe_fn():
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return F.cross_entropy(model(xb), yb)

    with pytest.raises(RuntimeError, match="boom"):
        run_probes(store, "s", [0.1, 0.2, 0.3], probe_fn, base_set_lr(optimizer))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert optimizer.param_groups[0]["lr"] == 0.1 and optimizer.param_groups[1]["lr"] == 0.1 / 3


def test_missing_slot_and_bad_probe_fn(digits):
    model, optimizer, store, xb, yb = setup(digits)
    assert run_probes(store, "nope", [0.1], lambda: F.cross_entropy(model(xb), yb), base_set_lr(optimizer)) is None
    with pytest.raises(TypeError, match="one-element tensor"):
        run_probes(store, "s", [0.1], lambda: 1.0, base_set_lr(optimizer))
    with pytest.raises(TypeError, match="one-element tensor"):
        run_probes(store, "s", [0.1], lambda: F.cross_entropy(model(xb), yb, reduction="none"), base_set_lr(optimizer))
