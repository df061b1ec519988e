"""CheckpointStore: restores are bitwise exact and checkpoints are real copies; no temp file survives."""

from __future__ import annotations

import gc
import os
import random
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from autolrs.callbacks.state import CheckpointStore
from callbacks_testlib import peer  # noqa: F401  (fixture)
from autolrs.testing.bitwise import assert_bitwise_equal, snapshot
from autolrs.testing.training import DigitsBatches, make_mlp, train_step

OPTIMIZERS = {
    "sgd-momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-4),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
}


def make_scaler():
    try:
        return torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1)
    except (AttributeError, TypeError, RuntimeError) as exc:  # older torch: no CPU GradScaler
        pytest.skip(f"no torch.amp.GradScaler('cpu'): {exc}")


@pytest.mark.parametrize("storage", ["memory", "cpu", "disk"])
@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_restore_is_bitwise_and_repeatable(opt, storage, tmp_path):
    model = make_mlp(batchnorm=True)
    optimizer = OPTIMIZERS[opt](model.parameters())
    batches = DigitsBatches(seed=1)
    store = CheckpointStore(model, optimizer, storage=storage, directory=tmp_path)
    for _ in range(3):  # optimizer state exists (momentum buffers, Adam moments and step)
        train_step(model, optimizer, batches)
    saved = snapshot(model, optimizer)
    store.save("stage")
    for _ in range(4):
        train_step(model, optimizer, batches)
    with pytest.raises(AssertionError):  # training really changed things
        assert_bitwise_equal(snapshot(model, optimizer), saved)

    assert store.restore("stage") is True
    assert_bitwise_equal(snapshot(model, optimizer), saved)
    # BatchNorm buffers are part of it (running stats and the batch counter).
    assert int(model[1].num_batches_tracked) == 3

    # Training after the first restore must not reach into the checkpoint.
    for _ in range(4):
        train_step(model, optimizer, batches)
    assert store.restore("stage") is True
    assert_bitwise_equal(snapshot(model, optimizer), saved)
    store.close()


@pytest.mark.parametrize("storage", ["memory", "cpu", "disk"])
def test_scaler_and_rng_restore(storage, tmp_path):
    model = make_mlp(dropout=0.2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scaler = make_scaler()
    batches = DigitsBatches(seed=2)
    store = CheckpointStore(model, optimizer, scaler=scaler, include_rng=True, storage=storage, directory=tmp_path)
    for _ in range(2):
        train_step(model, optimizer, batches, scaler)
    saved = snapshot(model, optimizer, scaler)
    store.save("s")
    draws = (torch.rand(3), np.random.rand(3), random.random())
    # Dropout consumes the torch RNG: the loss sequence after the checkpoint is RNG-dependent.
    x, y = batches.x[:64], batches.y[:64]

    def fixed_steps():
        out = []
        for _ in range(3):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            out.append(loss.detach().clone())
        return out

    first = fixed_steps()
    assert scaler.get_scale() != saved["scaler"]["scale"]  # growth_interval=1: the scale moved
    assert store.restore("s")
    assert_bitwise_equal(snapshot(model, optimizer, scaler), saved)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(draws[0], again[0]) and np.array_equal(draws[1], again[1]) and draws[2] == again[2]
    assert_bitwise_equal(fixed_steps(), first)  # the same trajectory, bit for bit
    store.close()


@pytest.mark.parametrize("storage", ["memory", "cpu"])
def test_memory_copies_are_independent_and_slots_behave(storage):
    model = make_mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    batches = DigitsBatches()
    train_step(model, optimizer, batches)
    store = CheckpointStore(model, optimizer, storage=storage)
    store.save("a")
    saved = snapshot(model, optimizer)
    # In-place changes of the live tensors must not show in the stored copy.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    for state in optimizer.state.values():
        state["exp_avg"].mul_(3.0)
    assert store.restore("a")
    assert_bitwise_equal(snapshot(model, optimizer), saved)
    assert store.restore("missing") is False
    assert "a" in store and store.slots == ["a"]
    store.discard("a")
    store.discard("a")  # no-op
    assert store.restore("a") is False and len(store) == 0
    store.close()
    store.close()
    with pytest.raises(RuntimeError):
        store.save("b")


@pytest.mark.parametrize("storage", ["memory", "cpu"])
def test_restore_brings_back_lr_and_tensor_lr_is_copied(storage):
    model = make_mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=torch.tensor(0.01), foreach=False)
    store = CheckpointStore(model, optimizer, storage=storage)
    store.save("a")
    optimizer.param_groups[0]["lr"].fill_(0.5)
    assert store.restore("a")
    assert float(optimizer.param_groups[0]["lr"]) == pytest.approx(0.01)
    optimizer.param_groups[0]["lr"].fill_(0.7)  # must not write into the checkpoint
    assert store.restore("a")
    assert float(optimizer.param_groups[0]["lr"]) == pytest.approx(0.01)
    store.close()


def test_disk_files_live_in_a_private_dir_and_close_removes_them(tmp_path):
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    store = CheckpointStore(model, optimizer, storage="disk", directory=tmp_path)
    assert store.path is None  # nothing created before the first save
    store.save("a")
    store.save("b")
    store.save("a")  # overwrites, still one file per slot
    assert os.path.dirname(store.path) == str(tmp_path)
    assert os.path.basename(store.path).startswith("autolrs-ckpt-")
    assert sorted(os.listdir(store.path)) == ["slot-1.pt", "slot-2.pt"]
    store.discard("b")
    assert os.listdir(store.path) == ["slot-1.pt"]
    store.close()
    assert os.listdir(tmp_path) == []
    store.close()


def test_disk_files_removed_on_exception_and_on_garbage_collection(tmp_path):
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(KeyError):
        with CheckpointStore(model, optimizer, storage="disk", directory=tmp_path) as store:
            store.save("a")
            raise KeyError("boom")
    assert os.listdir(tmp_path) == []

    store = CheckpointStore(model, optimizer, storage="disk", directory=tmp_path)
    store.save("a")
    assert os.listdir(tmp_path)
    del store
    gc.collect()
    assert os.listdir(tmp_path) == []


def test_bad_storage_is_refused():
    model = make_mlp()
    with pytest.raises(ValueError):
        CheckpointStore(model, torch.optim.SGD(model.parameters(), lr=0.1), storage="cloud")


DIES = """
import os, signal, sys, torch
from autolrs.callbacks.state import CheckpointStore
from autolrs.testing.training import make_mlp
model = make_mlp()
store = CheckpointStore(model, torch.optim.SGD(model.parameters(), lr=0.1), storage="disk", directory=sys.argv[1])
store.save("stage")
print(store.path, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # no close(), no finalizer, no atexit
"""


def test_folders_of_killed_processes_are_swept_by_the_next_store(tmp_path):
    result = subprocess.run([sys.executable, "-c", DIES, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == -signal.SIGKILL
    dead = result.stdout.strip()
    assert os.path.isdir(dead) and os.listdir(dead) == ["slot-1.pt"]
    host = os.path.basename(dead).split("-")[2]
    assert os.path.basename(dead).startswith(f"autolrs-ckpt-{host}-")
    # Folders the sweep must leave: a live process's (this one's), another host's, not ours at all.
    model = make_mlp()
    live = CheckpointStore(model, torch.optim.SGD(model.parameters(), lr=0.1), storage="disk", directory=tmp_path)
    live.save("x")
    other_host = tmp_path / "autolrs-ckpt-another.host-999999999-abc"  # that pid is nobody's here
    other_host.mkdir()
    unrelated = tmp_path / "my-own-folder-123"
    unrelated.mkdir()
    second = CheckpointStore(model, torch.optim.SGD(model.parameters(), lr=0.1), storage="disk", directory=tmp_path)
    assert not os.path.exists(dead)
    assert os.path.isdir(live.path) and other_host.is_dir() and unrelated.is_dir()
    live.close()
    second.close()


def test_checkpoint_dir_is_honoured(tmp_path, peer):
    from autolrs import actions
    from autolrs.callbacks import AutoLRS
    from autolrs.testing.peer import ScriptedTuner

    p = peer(ScriptedTuner([[actions.checkpoint("stage"), actions.run(3, 0)]]))
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    folder = tmp_path / "not-made-yet" / "ckpts"
    with AutoLRS(model, optimizer, server=p.endpoint, checkpoint_dir=folder, timeout=2.0) as cb:
        assert cb._checkpoints.storage == "disk"  # a folder given means disk checkpoints
        (made,) = os.listdir(folder)
        assert os.listdir(folder / made) == ["slot-1.pt"]
    assert os.listdir(folder) == []
    with pytest.raises(ValueError, match="checkpoint='disk'"):
        AutoLRS(model, optimizer, server=p.endpoint, checkpoint="memory", checkpoint_dir=folder)
