"""The LR range test through a real server: in the training loop (AutoLRS, tuner="range_test")
and with LRFinder; state restored bitwise, no temp file left, the plot a valid PNG, AMP skips."""

from __future__ import annotations

import copy
import os

import pytest
import torch

from autolrs import lr_curve
from autolrs.callbacks import AutoLRS, LRFinder

from autolrs.testing.bitwise import assert_bitwise_equal
from autolrs.testing.training import make_mlp

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def two_group_sgd(model, lr=1e-3):
    return torch.optim.SGD([{"params": model[0].parameters(), "lr": lr},
                            {"params": model[2].parameters(), "lr": lr / 3}], lr=lr, momentum=0.9,
                           weight_decay=1e-4)


def state_of(model, optimizer):
    return copy.deepcopy({"model": model.state_dict(), "optimizer": optimizer.state_dict()})


def loaders(digits, batch=64):
    x, y = digits
    data = torch.utils.data.TensorDataset(x, y)
    g = torch.Generator().manual_seed(0)
    train = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True, generator=g)
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:256], y[:256]), batch_size=128)
    return train, val


def test_in_loop_range_test_sweeps_then_restores_bitwise(live_server, digits, tmp_path):
    server = live_server()
    model = make_mlp()
    optimizer = two_group_sgd(model)
    x, y = digits
    g = torch.Generator().manual_seed(0)
    for _ in range(3):  # some momentum state to restore
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x[:64]), y[:64]).backward()
        optimizer.step()
    before = state_of(model, optimizer)
    ckpt_dir = tmp_path / "ckpt"
    ckpt_dir.mkdir()
    used = []
    config = {"end_lr": 10.0, "num_iter": 60, "chunk": 8}
    with AutoLRS(model, optimizer, tuner="range_test", config=config, server=server.endpoint, job="rt-loop",
                 checkpoint="disk", checkpoint_dir=ckpt_dir) as cb:
        for _ in range(200):
            idx = torch.randint(0, len(x), (64,), generator=g)
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            used.append([grp["lr"] for grp in optimizer.param_groups])
            optimizer.step()
            cb.step(loss)
            if cb.should_stop:
                break
        assert cb.should_stop
        assert os.listdir(ckpt_dir)  # the sweep's checkpoint folder exists while the callback lives
    assert os.listdir(ckpt_dir) == []  # ... and is gone after close
    expected = lr_curve.sweep_lrs(1e-3, 10.0, 60)
    assert [u[0] for u in used] == expected[:len(used)]
    assert [u[1] for u in used] == pytest.approx([lr / 3 for lr in expected[:len(used)]], rel=1e-12)
    assert_bitwise_equal(state_of(model, optimizer), before)


def test_lr_finder_range_test_reset_and_plot(live_server, digits, tmp_path):
    server = live_server()
    model = make_mlp()
    optimizer = two_group_sgd(model, lr=1e-4)
    before = state_of(model, optimizer)
    train, _ = loaders(digits)
    calls = []

    def criterion(out, target):
        calls.append(1)
        return torch.nn.functional.cross_entropy(out, target)

    tmp_before = set(os.listdir(tmp_path))
    with LRFinder(model, optimizer, criterion, server=server.endpoint, memory_cache=False,
                  cache_dir=str(tmp_path)) as finder:
        finder.range_test(train, start_lr=[1e-5, 1e-6], end_lr=1.0, num_iter=40, accumulation_steps=2,
                          diverge_th=None)
        assert len(calls) == 80  # one LR per optimizer step, two micro-batches each
        assert finder.history["lr"] == lr_curve.sweep_lrs(1e-5, 1.0, 40)
        assert finder.history["loss"] == lr_curve.smooth(finder.history["raw_loss"], 0.05)
        debiased = lr_curve.debiased(finder.history["raw_loss"], 0.05)
        for method in lr_curve.METHODS:
            expected = lr_curve.suggest(finder.history["lr"], debiased, method)
            assert finder.suggestion(method) == expected["lr"] == finder.summary["suggestions"][method]["lr"]
            # torch-lr-finder's own choice stays available: its smoothed curve.
            parity = lr_curve.suggest(finder.history["lr"], finder.history["loss"], method)
            assert finder.suggestion(method, curve="smoothed") == parity["lr"]
        # Already restored by the server (bar the start LRs), and exactly by reset().
        assert_bitwise_equal(state_of(model, optimizer)["model"], before["model"])
        finder.reset()
        assert_bitwise_equal(state_of(model, optimizer), before)
        path = tmp_path / "lr_finder.png"
        ax, lr = finder.plot(path=str(path), skip_start=5, skip_end=2)
        assert lr == finder.suggestion(skip_start=5, skip_end=2)
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        import matplotlib.image

        image = matplotlib.image.imread(str(path))
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
        assert len(ax.lines) == 1 and len(ax.collections) == 1 and ax.get_xscale() == "log"
        with pytest.raises(RuntimeError, match="need at least"):
            finder.plot(skip_start=30, skip_end=20, path=str(tmp_path / "short.png"))
        os.remove(path)
    assert set(os.listdir(tmp_path)) - {"state"} == tmp_before - {"state"}  # no temp file left


def test_lr_finder_validation_mode(live_server, digits):
    server = live_server()
    model = make_mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    train, val = loaders(digits)
    finder = LRFinder(model, optimizer, torch.nn.functional.cross_entropy, server=server.endpoint)
    before = state_of(model, optimizer)
    finder.range_test(train, val_loader=val, end_lr=1.0, num_iter=12, step_mode="linear")
    assert finder.history["lr"] == lr_curve.sweep_lrs(1e-4, 1.0, 12, "linear")[:len(finder.history["lr"])]
    assert len(finder.history["lr"]) >= 2
    finder.reset()
    assert_bitwise_equal(state_of(model, optimizer), before)


def test_scheduler_attached_is_refused():
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.optim.lr_scheduler.StepLR(optimizer, 10)
    with pytest.raises(RuntimeError, match="scheduler"):
        LRFinder(model, optimizer, torch.nn.functional.cross_entropy, server="tcp://127.0.0.1:1")


def test_grad_scaler_skipped_steps_do_not_advance_the_lr(live_server, digits):
    try:
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    except (AttributeError, TypeError, RuntimeError) as exc:
        pytest.skip(f"no torch.amp.GradScaler('cpu'): {exc}")
    server = live_server()
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = digits
    skip_at = {3, 4, 10}  # calls whose gradients are poisoned: the scaler skips those steps
    used, recorded = [], 0
    with AutoLRS(model, optimizer, tuner="range_test", config={"end_lr": 1.0, "num_iter": 20, "chunk": 6},
                 server=server.endpoint, job="rt-amp", scaler=scaler) as cb:
        for call in range(40):
            optimizer.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(model(x[:64]).float(), y[:64])
            scaler.scale(loss).backward()
            if call in skip_at:
                model[0].weight.grad.fill_(float("inf"))
            lr = optimizer.param_groups[0]["lr"]
            scale = scaler.get_scale()
            scaler.step(optimizer)
            scaler.update()
            if scaler.get_scale() >= scale:  # really stepped
                used.append(lr)
            cb.step(loss)
            recorded += 1
            if cb.should_stop:
                break
        assert cb.skipped_steps == len(skip_at)
        assert cb.global_step == 20
    # Every real optimizer step got the next LR of the sweep: skipped ones consumed none.
    assert used == lr_curve.sweep_lrs(1e-3, 1.0, 20)
    assert recorded == 20 + len(skip_at)
