"""Mistakes a new user makes get a clear answer: an LR scheduler on the optimizer, a forgotten
optimizer.step(), a malformed server address."""

from __future__ import annotations

import warnings

import pytest
import torch
from callbacks_testlib import peer  # noqa: F401  (fixture)

from autolrs.actions import run, set_lr
from autolrs.callbacks import AutoLRS, AutoLRSConfigError, AutoLRSWarning
from autolrs.testing.peer import ScriptedTuner
from autolrs.testing.training import DigitsBatches, make_mlp, train_step


def test_an_lr_scheduler_on_the_optimizer_is_a_clear_error(peer):
    p = peer(ScriptedTuner([[run(5, 0)], [set_lr(0.05), run(5, 5)]] * 3))
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    with pytest.raises(AutoLRSConfigError, match="LR scheduler.*allow_scheduler=True"):
        AutoLRS(model, optimizer, server=p.endpoint, timeout=2.0)
    assert p.requests("hello") == []  # refused before anything was sent
    with AutoLRS(model, optimizer, server=p.endpoint, timeout=2.0, allow_scheduler=True) as cb:
        cb.step(train_step(model, optimizer, DigitsBatches()))

    # One built after the callback is caught at the next report.
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = DigitsBatches()
    with pytest.raises(AutoLRSConfigError, match="LR scheduler"):
        with AutoLRS(model, optimizer, server=p.endpoint, timeout=2.0) as cb:
            torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.9)
            for _ in range(5):
                cb.step(train_step(model, optimizer, batches))


def test_a_step_without_optimizer_step_warns_once(peer):
    p = peer(ScriptedTuner([[run(50, 0)]]))
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = DigitsBatches()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with AutoLRS(model, optimizer, server=p.endpoint, timeout=2.0) as cb:
            for _ in range(3):
                cb.step(train_step(model, optimizer, batches))  # as it should be: no warning
            for _ in range(4):
                x, y = batches.next()
                loss = torch.nn.functional.cross_entropy(model(x), y)
                loss.backward()
                cb.step(loss)  # optimizer.step() forgotten
            assert cb.global_step == 7  # counted all the same
    ours = [str(w.message) for w in caught if issubclass(w.category, AutoLRSWarning)]
    assert len(ours) == 1 and "no optimizer.step()" in ours[0]


@pytest.mark.parametrize("address", ["127.0.0.1:5555", "tcp://127.0.0.1", "tcp://127.0.0.1:0", "localhost",
                                     "tcp://127.0.0.1:99999", "http://127.0.0.1:5555", "tcp://a b:5555", ""])
def test_a_malformed_address_says_what_is_expected(address):
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="expected tcp://HOST:PORT"):
        AutoLRS(model, optimizer, server=address)
