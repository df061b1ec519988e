"""Outages of a real server process (SIGKILL, restart on the same port and state folder) while a
real model trains on digits: a schedule stays exactly on plan through an outage shorter than a
chunk (the client holds the next chunk before the current one runs out); in AutoLRS no step
trained at a trial's LR while the server is away stays on the path to the final weights."""

from __future__ import annotations

import time
import warnings

import pytest
import torch

from autolrs.callbacks import AutoLRS, ServerUnavailable, ServerUnavailableWarning
from autolrs.callbacks.plans import OUTAGE_SLOT
from autolrs.callbacks.state import CheckpointStore
from autolrs.testing.training import DigitsBatches, make_mlp, torch_scheduler_lrs, train_step
from autolrs.wire import protocol

OUTAGE_S = 12.0


def decisions(state_dir, job):
    path = state_dir / "jobs" / job / "decisions.jsonl"
    return [protocol.loads(line) for line in path.read_bytes().splitlines()]


@pytest.mark.parametrize("guard", [False, True])
def test_a_schedule_stays_on_plan_through_an_outage_shorter_than_a_chunk(live_server, tmp_path, guard):
    """cosine with chunk 500: the server is killed 100 steps before a report and comes back 12 s
    later, about 250 steps into the next chunk; every one of the 2,000 steps is on plan, with
    the divergence guard's segments (40 steps) as without them."""
    state = tmp_path / "state"
    server = live_server(state)
    port = server.port
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    lrs = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with AutoLRS(model, optimizer, tuner="cosine", config={"T_0": 700, "eta_min": 0.001, "chunk": 500, "guard": guard},
                     server=server.endpoint, job="outage-cosine", max_steps=2000, timeout=1.0,
                     retry_interval=0.25) as cb:
            batches = DigitsBatches()
            down_since = None
            while not cb.should_stop:
                lrs.append(optimizer.param_groups[0]["lr"])
                cb.step(train_step(model, optimizer, batches))
                if cb.global_step == 900:
                    server.kill()
                    down_since = time.monotonic()
                if down_since is not None:
                    time.sleep(0.04)  # about 250 steps in the outage: less than a chunk
                    if time.monotonic() - down_since >= OUTAGE_S:
                        assert 1000 < cb.global_step < 1450 and not cb.online  # the report at 1000 is pending
                        server = live_server(state, port=port)
                        down_since = None
            assert cb.online
    expected = torch_scheduler_lrs(lambda opt: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        opt, T_0=700, eta_min=0.001), 0.1, 2000)
    off_plan = sum(a != b for a, b in zip(lrs, expected))
    assert len(lrs) == 2000 and off_plan == 0
    assert len([w for w in caught if issubclass(w.category, ServerUnavailableWarning)]) == 1
    # The report that went unanswered was applied once the server was back; none was lost.
    reports = [r["step"] for r in decisions(state, "outage-cosine") if r["kind"] == "report"]
    if not guard:
        assert reports == [500, 1000, 1500, 2000]
    else:  # the guard's segments, 40 steps within each chunk, then the jump past the outage
        assert reports[:13] == [*range(40, 481, 40), 500] and reports[-1] == 2000
        assert reports == sorted(set(reports))


class Lineage:
    """Which training steps lead to the model's current weights: every checkpoint remembers the
    steps behind it and every restore brings them back (the checkpoint store's methods wrapped
    for the test)."""

    def __init__(self, monkeypatch):
        self.steps: list[int] = []
        self.saved: dict[str, list[int]] = {}
        save, restore = CheckpointStore.save, CheckpointStore.restore

        def tracked_save(store, slot):
            save(store, slot)
            self.saved[slot] = list(self.steps)

        def tracked_restore(store, slot):
            done = restore(store, slot)
            if done:
                self.steps = list(self.saved[slot])
            return done

        monkeypatch.setattr(CheckpointStore, "save", tracked_save)
        monkeypatch.setattr(CheckpointStore, "restore", tracked_restore)


@pytest.mark.slow
def test_autolrs_keeps_no_trial_lr_step_from_outages(live_server, tmp_path, monkeypatch):
    """Ten SIGKILLs of the server during an AutoLRS job, half of them in a trial: the steps the
    trainer takes after a search run while the server is away are at the LR from before the
    search, and the restore when the server answers takes every one of them off the path."""
    state = tmp_path / "state"
    server = live_server(state)
    port = server.port
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    config = {"tau": 12, "tau_max": 24, "k": 3, "trial_fraction": 0.5, "lr_min": 0.01, "lr_max": 0.5,
              "guard": False}  # the guard splits the training runs (its offline behaviour: docs/guard.md)
    record = []  # (step index, lr, after the end of a search run with no answer yet, in a search run)
    kills, next_kill = 0, 30
    lineage = Lineage(monkeypatch)
    with AutoLRS(model, optimizer, tuner="autolrs", config=config, server=server.endpoint, job="outage-autolrs",
                 max_steps=1800, timeout=0.3, retry_interval=0.1) as cb:
        batches = DigitsBatches()
        down_at = None
        while not cb.should_stop and cb.global_step < 2400:
            held = cb._provisional is not None
            searching = cb._run_is_search and cb._segment.active
            record.append((cb.global_step + 1, optimizer.param_groups[0]["lr"], held, searching))
            lineage.steps.append(cb.global_step + 1)
            cb.step(train_step(model, optimizer, batches))
            if down_at is None and kills < 10 and cb.online and cb.global_step >= next_kill:
                # Even kills in a trial with steps left (its report falls in the outage), odd ones anywhere.
                segment = cb._segment
                if kills % 2 or (cb._run_is_search and segment.active and segment.done <= segment.length - 2):
                    server.kill()
                    kills += 1
                    down_at, next_kill = cb.global_step, cb.global_step + 45
            elif down_at is not None and cb.global_step >= down_at + 25:
                server = live_server(state, port=port)
                down_at = None
    assert kills == 10 and cb.global_step >= 1800 and cb.should_stop
    held_steps = {i for i, _, held, _ in record if held}
    assert len(held_steps) >= 20  # outages did fall after search runs
    # Each stretch of held steps trains at the LR from before the search (the LR of the last step
    # that was neither in a search run nor held; the optimizer's at the start), never at a trial's ...
    stretches = []  # (the LR from before the search, the LRs of the stretch)
    for i, (_, lr, held, searching) in enumerate(record):
        if held and not record[i - 1][2]:
            before = [r[1] for r in record[:i] if not r[2] and not r[3]]
            stretches.append((before[-1] if before else 0.1, set()))
        if held:
            stretches[-1][1].add(lr)
    assert len(stretches) >= 5 and all(lrs == {before} for before, lrs in stretches), stretches
    # ... and none of them is on the path to the final weights.
    assert held_steps.isdisjoint(lineage.steps)
    assert OUTAGE_SLOT not in cb._checkpoints.slots


def test_require_server_raises_instead_of_failing_open(live_server, tmp_path):
    server = live_server(tmp_path / "state")
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = DigitsBatches()
    with pytest.raises(ServerUnavailable, match="require_server"):
        with AutoLRS(model, optimizer, tuner="constant", config={"chunk": 5}, server=server.endpoint,
                     timeout=0.5, require_server=True) as cb:
            for _ in range(4):
                cb.step(train_step(model, optimizer, batches))
            server.kill()
            for _ in range(10):
                cb.step(train_step(model, optimizer, batches))
    # Raised at the report of step 10: the one of step 5 went unanswered too, but the plan sent
    # ahead kept the schedule on plan until it ran out.
    assert cb.global_step == 10
    dead = f"tcp://127.0.0.1:{server.port}"
    with pytest.raises(ServerUnavailable, match="hello"):
        AutoLRS(model, optimizer, server=dead, timeout=0.3, require_server=True)


def test_a_run_never_tuned_warns_at_close(tmp_path):
    from autolrs.testing.peer import free_port

    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = DigitsBatches()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with AutoLRS(model, optimizer, server=f"tcp://127.0.0.1:{free_port()}", timeout=0.2,
                     retry_interval=0.1) as cb:
            for _ in range(3):
                cb.step(train_step(model, optimizer, batches))
    messages = [str(w.message) for w in caught]
    assert any("never received a decision" in m for m in messages), messages
