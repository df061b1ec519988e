"""A real server process drives a real training loop (digits, small MLP) through the callback."""

from __future__ import annotations

import time
import warnings

import pytest
import torch

from autolrs.callbacks import AutoLRS, ServerUnavailableWarning

from autolrs.testing.training import make_mlp, torch_scheduler_lrs

STEPS = 120
SCHEDULES = [
    ("cosine", {"T_0": 15, "T_mult": 2, "eta_min": 0.001},
     lambda opt: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=15, T_mult=2, eta_min=0.001)),
    ("step", {"step_size": 25, "gamma": 0.5},
     lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=25, gamma=0.5)),
    ("exponential", {"gamma": 0.98},
     lambda opt: torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.98)),
]


def train(model, optimizer, digits, steps, callback=None, on_step=None, batch=64):
    """Plain SGD loop over digits; returns the LR used at each optimizer step."""
    x, y = digits
    g = torch.Generator().manual_seed(0)
    used = []
    for step in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=g)
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if callback is not None:
            callback.step(loss)
        if on_step is not None:
            on_step(step + 1)
    return used


@pytest.mark.parametrize("name, knobs, make_scheduler", SCHEDULES, ids=[s[0] for s in SCHEDULES])
def test_server_schedule_equals_torch_scheduler_step_for_step(live_server, digits, name, knobs, make_scheduler):
    server = live_server()
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    # A short chunk, so the run crosses many server round trips.
    with AutoLRS(model, optimizer, tuner=name, config={**knobs, "chunk": 16}, server=server.endpoint,
                 job=f"sched-{name}") as cb:
        used = train(model, optimizer, digits, STEPS, cb)
    assert used == torch_scheduler_lrs(make_scheduler, 0.1, STEPS)


def test_param_groups_keep_their_ratio(live_server, digits):
    server = live_server()
    model = make_mlp()
    optimizer = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.1},
                                 {"params": model[2].parameters(), "lr": 0.01}], lr=0.1)
    with AutoLRS(model, optimizer, tuner="exponential", config={"gamma": 0.9, "chunk": 8},
                 server=server.endpoint) as cb:
        train(model, optimizer, digits, 20, cb)
        lrs = [g["lr"] for g in optimizer.param_groups]
    assert lrs[0] == pytest.approx(0.1 * 0.9 ** 20, rel=1e-12)
    assert lrs[1] == pytest.approx(lrs[0] / 10, rel=1e-12)


def test_server_killed_and_restarted_mid_run_resumes_the_job(live_server, digits, tmp_path):
    state_dir = tmp_path / "state"
    first = live_server(state_dir)
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    restarted = {}

    def crash_and_restart(step):
        if step == 40:  # between two reports (chunk 16: reports at 32 and 48)
            first.kill()
            restarted["server"] = live_server(state_dir, port=first.port)

    with AutoLRS(model, optimizer, tuner="cosine", config={"T_0": 30, "chunk": 16}, server=first.endpoint,
                 job="crash-test", timeout=10.0) as cb:
        used = train(model, optimizer, digits, 100, cb, on_step=crash_and_restart)
        assert cb.online
    expected = torch_scheduler_lrs(
        lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=30), 0.1, 100)
    assert used == expected
    log = (state_dir / "jobs" / "crash-test" / "decisions.jsonl").read_text().splitlines()
    # hello + one report per 16 steps + goodbye, none lost or doubled across the crash.
    assert len(log) == 1 + 100 // 16 + 1


def test_training_without_a_server_finishes_with_one_warning(digits, tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    started = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with AutoLRS(model, optimizer, tuner="cosine", config={"T_0": 10}, server=f"tcp://127.0.0.1:{port}",
                     timeout=0.5, retry_interval=0.2) as cb:
            used = train(model, optimizer, digits, 200, cb)
    elapsed = time.monotonic() - started
    unavailable = [w for w in caught if issubclass(w.category, ServerUnavailableWarning)]
    assert len(unavailable) == 1, [str(w.message) for w in caught]
    assert used == [0.05] * 200
    assert elapsed < 15, f"training without a server took {elapsed:.1f}s"


def test_server_dying_mid_run_never_stops_training(live_server, digits):
    server = live_server()
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    started = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with AutoLRS(model, optimizer, tuner="exponential", config={"gamma": 0.99, "chunk": 10},
                     server=server.endpoint, timeout=0.5, retry_interval=0.2) as cb:
            used = train(model, optimizer, digits, 150, cb,
                         on_step=lambda step: server.kill() if step == 35 else None)
    assert len([w for w in caught if issubclass(w.category, ServerUnavailableWarning)]) == 1
    assert len(used) == 150
    # The schedule ran until the server died and on through the chunk the last reply had sent
    # ahead (next), then the LR stayed where it was.
    assert used[:50] == torch_scheduler_lrs(lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.99), 0.1, 50)
    assert set(used[50:]) == {used[49]}
    assert time.monotonic() - started < 20
