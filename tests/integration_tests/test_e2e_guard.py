"""The divergence guard end to end: a real server process, the real callback, real training on
scikit-learn's digits."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

from autolrs.callbacks import AutoLRS

STEPS = 300


def tanh_mlp(seed: int = 0) -> torch.nn.Module:
    # Tanh rather than ReLU: a ReLU network that a too large LR kills can sit at chance level
    # with no loss spike to see (see the README's guard section); this one diverges loudly.
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Linear(32, 10))


def decisions(state_dir, job: str) -> list[dict]:
    lines = (state_dir / "jobs" / job / "decisions.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def train(model, optimizer, digits, cb, steps=STEPS, seed=0, scaler=None, report=None):
    """SGD on the first 1,400 digits; returns the LR of every step. ``report(step, loss)`` is
    what ``cb.step`` gets (default: the loss)."""
    x, y = digits
    g = torch.Generator().manual_seed(seed)
    used = []
    for step in range(steps):
        idx = torch.randint(0, 1400, (32,), generator=g)
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        used.append(optimizer.param_groups[0]["lr"])
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            if report is not None and report(step, None) == "overflow":
                for p in model.parameters():
                    p.grad.fill_(math.inf)  # what a float16 overflow does: GradScaler skips this step
            scaler.step(optimizer)
            scaler.update()
        cb.step(loss.detach() if report is None else report(step, loss.detach()))
        if cb.should_stop:
            break
    return used


def accuracy(model, digits) -> float:
    x, y = digits
    with torch.no_grad():
        return float((model(x[1400:]).argmax(1) == y[1400:]).float().mean())


def test_the_guard_recovers_a_run_whose_lr_is_far_too_large(live_server, digits, tmp_path):
    server = live_server(tmp_path / "state")
    results = {}
    for guard in (False, True):
        model = tanh_mlp()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with AutoLRS(model, optimizer, tuner="constant", config={"lr": 3.0, "guard": guard},
                         server=server.endpoint, job=f"too-large-{guard}", max_steps=STEPS) as cb:
                used = train(model, optimizer, digits, cb)
        results[guard] = (accuracy(model, digits), used)
    assert results[False][0] < 0.2  # at chance without the guard
    assert results[True][0] > 0.7, results[True][0]

    records = decisions(tmp_path / "state", "too-large-True")
    rollbacks = [r for r in records if r["kind"] == "report" and (r["summary"]["guard"]["action"] or {}).get("action")
                 == "rollback"]
    assert rollbacks, "no rollback in the decision log"
    for r in rollbacks:  # each is a decision line: restore the snapshot, then the cut LR
        event = r["summary"]["guard"]["action"]
        assert r["plan"][0] == {"op": "restore", "slot": "guard"}
        assert event["lr_after"] == pytest.approx(event["lr_before"] / 2)
        assert event["to_step"] < r["step"] and event["reason"]
    final = records[-2]["summary"]["guard"]  # the line before goodbye
    assert final["rollbacks"] == len(rollbacks) and final["lr_scale"] == 0.5 ** len(rollbacks)
    used = results[True][1]
    assert used[-1] == pytest.approx(3.0 * 0.5 ** len(rollbacks))  # the client trained at the cut LR


def test_steps_the_gradscaler_skips_are_never_spikes(live_server, digits, tmp_path):
    """Steps whose gradients overflow are skipped by the GradScaler and ignored by the callback,
    so the absurd losses passed for them never reach the guard; the same losses on steps that
    count are a spike and roll back."""
    server = live_server(tmp_path / "state")
    bad = {60, 61, 62, 63}
    outcome = {}
    for skipped in (True, False):
        model = tanh_mlp()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        scaler = torch.amp.GradScaler("cpu")

        def report(step, loss, skipped=skipped):
            if loss is None:  # asked whether to overflow this step
                return "overflow" if skipped and step in bad else None
            return loss * 1e4 if step in bad else loss

        with AutoLRS(model, optimizer, tuner="constant", config={"guard_every": 20}, scaler=scaler,
                     server=server.endpoint, job=f"scaler-{skipped}", max_steps=200) as cb:
            train(model, optimizer, digits, cb, steps=200 + (len(bad) if skipped else 0), scaler=scaler,
                  report=report)
            outcome[skipped] = (cb.skipped_steps, cb.global_step)
        summary = decisions(tmp_path / "state", f"scaler-{skipped}")[-2]["summary"]["guard"]
        outcome[skipped] += (summary["rollbacks"],)
    assert outcome[True] == (len(bad), 200, 0)  # skipped, not counted, no rollback
    assert outcome[False][0] == 0 and outcome[False][2] == 1  # the same losses counted: one rollback
