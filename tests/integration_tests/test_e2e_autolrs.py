"""AutoLRS end to end: a real server process tunes a real training loop on digits."""

from __future__ import annotations

import json

import torch

from autolrs.callbacks import AutoLRS

from autolrs.testing.training import make_mlp

MIN_LR, MAX_LR, BUDGET = 1e-3, 1.0, 480


def split(digits):
    x, y = digits
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    val, train = order[:300], order[300:]
    return (x[train], y[train]), (x[val], y[val])


def train(train_set, val_set, callback_factory=None, lr=MIN_LR):
    x, y = train_set
    model = make_mlp(seed=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)

    def val_loss() -> float:
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(model(val_set[0]), val_set[1]).item()

    cb = callback_factory(model, optimizer, val_loss) if callback_factory else None
    g = torch.Generator().manual_seed(2)
    steps = 0
    while steps < BUDGET and not (cb and cb.should_stop):
        idx = torch.randint(0, len(x), (32,), generator=g)
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        optimizer.step()
        steps += 1
        if cb:
            cb.step(loss)
    if cb:
        cb.close()
    return val_loss(), steps


def test_autolrs_beats_training_at_min_lr(live_server, digits, tmp_path):
    server = live_server(tmp_path / "state")
    train_set, val_set = split(digits)
    config = {"lr_min": MIN_LR, "lr_max": MAX_LR, "tau": 60, "k": 4, "tau_max": 240}

    def factory(model, optimizer, val_fn):
        return AutoLRS(model, optimizer, tuner="autolrs", config=config, server=server.endpoint,
                       job="digits-autolrs", val_fn=val_fn, max_steps=BUDGET, seed=0)

    tuned_loss, tuned_steps = train(train_set, val_set, factory)
    baseline_loss, _ = train(train_set, val_set, lr=MIN_LR)
    assert tuned_steps == BUDGET  # the budget-aware planner used the whole budget and no more
    assert tuned_loss < baseline_loss, (tuned_loss, baseline_loss)

    # The job log records every stage's candidates, the winner and the search overhead.
    records = [json.loads(line) for line in
               (tmp_path / "state" / "jobs" / "digits-autolrs" / "decisions.jsonl").read_text().splitlines()]
    summaries = [r["summary"] for r in records if r.get("summary")]
    last = summaries[-1]
    assert last["search_steps"] + last["train_steps"] + last.get("warmup_steps", 0) == BUDGET
    assert last["search_steps"] > 0 and last["train_steps"] > 0
    stages = [s["last_stage"] for s in summaries if s.get("last_stage")]
    assert stages and all(len(stage["trials"]) == 4 for stage in stages)
    assert all(MIN_LR <= t["lr"] <= MAX_LR for stage in stages for t in stage["trials"])


def test_autolrs_with_auto_bounds_needs_no_lr_range(live_server, digits, tmp_path):
    """lr_min/lr_max "auto": a range test on the real model sets the interval, the weights it
    started from are restored, and the search that follows still beats training at 1e-3."""
    server = live_server(tmp_path / "state")
    train_set, val_set = split(digits)
    config = {"lr_min": "auto", "lr_max": "auto", "auto_start_lr": 1e-5, "auto_num_iter": 60,
              "tau": 60, "k": 4, "tau_max": 240}

    def factory(model, optimizer, val_fn):
        return AutoLRS(model, optimizer, tuner="autolrs", config=config, server=server.endpoint,
                       job="digits-auto", val_fn=val_fn, max_steps=BUDGET, seed=0)

    tuned_loss, tuned_steps = train(train_set, val_set, factory)
    baseline_loss, _ = train(train_set, val_set, lr=MIN_LR)
    assert tuned_steps == BUDGET
    assert tuned_loss < baseline_loss, (tuned_loss, baseline_loss)

    records = [json.loads(line) for line in
               (tmp_path / "state" / "jobs" / "digits-auto" / "decisions.jsonl").read_text().splitlines()]
    plans = [r["plan"] for r in records if r.get("plan")]
    # The first plan after the sweep puts the pre-sweep weights back before stage 1's checkpoint.
    first_stage = next(p for p in plans if any(a.get("slot") == "stage" for a in p))
    assert [a["op"] for a in first_stage[:4]] == ["restore", "discard", "set_lr", "checkpoint"]
    last = [r["summary"] for r in records if r.get("summary")][-1]
    assert last["bounds_source"].startswith("range test")
    assert 1e-5 <= last["lr_min"] < last["lr_max"] <= 10.0
    assert last["bounds_steps"] + last["search_steps"] + last["train_steps"] == BUDGET
    stages = [s["last_stage"] for s in (r["summary"] for r in records if r.get("summary")) if s.get("last_stage")]
    assert all(last["lr_min"] <= t["lr"] <= last["lr_max"] for stage in stages for t in stage["trials"])
