"""CUDA checks: bitwise restore of CUDA state and no device sync in the per-step path."""

from __future__ import annotations

import pytest
import torch

from autolrs.actions import run
from autolrs.callbacks import AutoLRS
from autolrs.callbacks.state import CheckpointStore
from autolrs.testing.bitwise import assert_bitwise_equal, snapshot
from autolrs.testing.peer import ScriptedTuner
from autolrs.testing.training import make_mlp
from callbacks_testlib import peer  # noqa: F401  (fixture)

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def cuda_step(model, optimizer, x, y):
    optimizer.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(torch.nn.functional.dropout(model(x), 0.1), y)
    loss.backward()
    optimizer.step()
    return loss


@pytest.mark.parametrize("storage", ["memory", "cpu", "disk"])
def test_cuda_restore_is_bitwise_with_cuda_rng(storage, tmp_path):
    model = make_mlp(batchnorm=True).cuda()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(64, 64, device="cuda"), torch.randint(0, 10, (64,), device="cuda")
    store = CheckpointStore(model, optimizer, include_rng=True, storage=storage, directory=tmp_path)
    for _ in range(2):
        cuda_step(model, optimizer, x, y)
    saved = snapshot(model, optimizer)
    store.save("s")
    losses = [cuda_step(model, optimizer, x, y).detach().clone() for _ in range(3)]
    assert store.restore("s")
    assert_bitwise_equal(snapshot(model, optimizer), saved)
    again = [cuda_step(model, optimizer, x, y).detach().clone() for _ in range(3)]
    assert_bitwise_equal(again, losses)  # same dropout masks: the CUDA RNG came back too
    store.close()


def test_cpu_placement_keeps_pinned_host_copies_and_no_snapshot_on_the_device():
    model = make_mlp(batchnorm=True).cuda()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(64, 64, device="cuda"), torch.randint(0, 10, (64,), device="cuda")
    cuda_step(model, optimizer, x, y)
    store = CheckpointStore(model, optimizer, storage="cpu")
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    store.save("s")
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == before  # the snapshot holds no device memory
    slot = store._memory["s"]["state"]
    host = list(slot["model"].values()) + [t for st in slot["optimizer"]["state"].values()
                                           for t in st.values() if isinstance(t, torch.Tensor)]
    assert all(t.device.type == "cpu" for t in host)
    assert all(t.is_pinned() for t in slot["model"].values())
    saved = snapshot(model, optimizer)
    for _ in range(3):
        cuda_step(model, optimizer, x, y)
    assert store.restore("s") and store.restore("s")
    assert_bitwise_equal(snapshot(model, optimizer), saved)
    store.close()


def test_step_does_not_sync_the_device(peer):
    p = peer(ScriptedTuner([[run(10_000, 0, lrs=[0.1] * 5_000 + [0.05] * 5_000)]]))
    model = make_mlp().cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(64, 64, device="cuda"), torch.randint(0, 10, (64,), device="cuda")
    with AutoLRS(model, optimizer, server=p.endpoint, timeout=5.0) as cb:
        for _ in range(3):  # warm-up outside the check (lazy CUDA init syncs)
            cb.step(cuda_step(model, optimizer, x, y))
        for _ in range(200):
            loss = cuda_step(model, optimizer, x, y)
            torch.cuda.set_sync_debug_mode("error")  # only around cb.step: training may sync
            try:
                cb.step(loss)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        assert cb.global_step == 203
