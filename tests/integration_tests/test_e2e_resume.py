"""A trainer that crashes and restarts from its own checkpoint carries on with the same tuning
job: AutoLRS.state_dict() saved beside the model's and the optimizer's, load_state_dict() in a
new process, a real server in between. And the job's summary arrives with the goodbye reply."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

from autolrs.callbacks import AutoLRS
from autolrs.testing.training import DigitsBatches, make_mlp, torch_scheduler_lrs, train_step
from autolrs.wire import protocol

KNOBS = {"T_0": 15, "eta_min": 0.001, "chunk": 5}
STEPS, CRASH_AT = 40, 20

# The first life of the trainer: CRASH_AT steps, a checkpoint, then it dies without a goodbye.
FIRST_LIFE = textwrap.dedent(f"""
    import json, os, sys, torch
    from autolrs.callbacks import AutoLRS
    from autolrs.testing.training import DigitsBatches, make_mlp, train_step
    torch.set_num_threads(1)
    endpoint, out = sys.argv[1], sys.argv[2]
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    cb = AutoLRS(model, optimizer, tuner="cosine", config={KNOBS!r}, server=endpoint, job="resume-job",
                 max_steps={STEPS}, timeout=10.0)
    batches, lrs = DigitsBatches(), []
    for _ in range({CRASH_AT}):
        lrs.append(optimizer.param_groups[0]["lr"])
        cb.step(train_step(model, optimizer, batches))
    torch.save({{"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "autolrs": json.dumps(cb.state_dict()), "lrs": lrs}}, out)
    os._exit(0)  # a crash: no goodbye, nothing cleaned up
""")


def decisions(server, job):
    path = server.state_dir / "jobs" / job / "decisions.jsonl"
    return [protocol.loads(line) for line in path.read_bytes().splitlines()]


@pytest.mark.parametrize("same_job_id", [False, True], ids=["default-job-id", "same-job-id"])
def test_a_restarted_trainer_continues_the_same_job(live_server, tmp_path, same_job_id):
    server = live_server(tmp_path / "state")
    script, checkpoint = tmp_path / "first_life.py", tmp_path / "checkpoint.pt"
    script.write_text(FIRST_LIFE)
    first = subprocess.run([sys.executable, str(script), server.endpoint, str(checkpoint)], capture_output=True,
                           text=True, timeout=120)
    assert first.returncode == 0, first.stderr[-3000:]

    saved = torch.load(checkpoint, weights_only=True)
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    lrs = list(saved["lrs"])
    with AutoLRS(model, optimizer, tuner="cosine", config=KNOBS, server=server.endpoint, max_steps=STEPS,
                 job="resume-job" if same_job_id else None, timeout=10.0) as cb:
        cb.load_state_dict(json.loads(saved["autolrs"]))
        assert cb.job == "resume-job" and cb.global_step == CRASH_AT
        batches = DigitsBatches(seed=1)
        while not cb.should_stop:
            lrs.append(optimizer.param_groups[0]["lr"])
            cb.step(train_step(model, optimizer, batches))
    # One schedule across both lives, as torch's scheduler gives it.
    expected = torch_scheduler_lrs(lambda opt: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        opt, T_0=15, eta_min=0.001), 0.1, STEPS)
    assert len(lrs) == STEPS and lrs == expected

    records = decisions(server, "resume-job")
    hellos = [r for r in records if r["kind"] == "hello"]
    assert hellos[0]["resumed"] is False and hellos[-1]["resumed"] is True and hellos[-1]["client_step"] == CRASH_AT
    assert len({r["client_id"] for r in records}) == 2  # two lives, two clients, one job
    assert records[-1]["kind"] == "goodbye" and records[-1]["step"] == STEPS
    assert cb.summary == records[-1]["summary"] and cb.summary["step"] == STEPS
    others = [p.name for p in (server.state_dir / "jobs").iterdir() if p.name != "resume-job"]
    if same_job_id:
        assert others == []
    else:  # the job the new callback started before loading the state was closed as replaced
        assert len(others) == 1 and decisions(server, others[0])[-1]["reason"] == "replaced"


def test_summary_after_close_is_the_servers_account_of_the_job(live_server, tmp_path):
    server = live_server(tmp_path / "state")
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with AutoLRS(model, optimizer, tuner="step", config={"step_size": 5, "gamma": 0.5, "chunk": 4, "guard": False},
                 server=server.endpoint, job="summary-job", max_steps=12) as cb:
        batches = DigitsBatches()
        while not cb.should_stop:
            cb.step(train_step(model, optimizer, batches))
        assert cb.summary is None
    assert cb.summary == {"step": 12, "lr": 0.025}
    assert decisions(server, "summary-job")[-1]["summary"] == cb.summary


# A trainer that saves its checkpoint at step SAVE_AT, trains on past it (the server's job moves
# ahead of the checkpoint) and is SIGKILLed by the test: nothing of it cleans up.
KILLED_LIFE = textwrap.dedent("""
    import json, sys, time, torch
    from autolrs.callbacks import AutoLRS
    from autolrs.testing.training import DigitsBatches, make_mlp, train_step
    torch.set_num_threads(1)
    endpoint, out, tuner, config, max_steps, save_at = sys.argv[1:7]
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    cb = AutoLRS(model, optimizer, tuner=tuner, config=json.loads(config), server=endpoint, job="killed-job",
                 max_steps=int(max_steps), timeout=10.0)
    batches, lrs = DigitsBatches(), []
    while True:
        lrs.append(optimizer.param_groups[0]["lr"])
        cb.step(train_step(model, optimizer, batches))
        if cb.global_step == int(save_at):
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "autolrs": json.dumps(cb.state_dict()), "lrs": lrs}, out)
            print("saved", flush=True)
        if cb.global_step > int(save_at):
            print("step", cb.global_step, flush=True)
            time.sleep(0.02)
""")


def kill_after_the_server_moved_on(server, tmp_path, tuner, config, max_steps, save_at, ahead):
    """Run KILLED_LIFE until the server's job stands ``ahead`` steps past the checkpoint, then
    SIGKILL it; the checkpoint's path."""
    script, checkpoint = tmp_path / "killed_life.py", tmp_path / "checkpoint.pt"
    script.write_text(KILLED_LIFE)
    child = subprocess.Popen([sys.executable, str(script), server.endpoint, str(checkpoint), tuner, json.dumps(config),
                              str(max_steps), str(save_at)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    saved = False
    try:
        for line in child.stdout:
            saved = saved or line.startswith("saved")
            reports = [r for r in decisions(server, "killed-job") if r["kind"] == "report"]
            if saved and reports and reports[-1]["step"] >= save_at + ahead:
                break
        else:
            raise AssertionError(f"the trainer ended: {child.stderr.read()[-3000:]}")
    finally:
        child.kill()  # SIGKILL
        child.wait(30)
    assert child.returncode == -signal.SIGKILL
    return checkpoint


def restart(checkpoint):
    """The model, optimizer, LRs so far and callback state of the checkpoint."""
    saved = torch.load(checkpoint, weights_only=True)
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    return model, optimizer, list(saved["lrs"]), json.loads(saved["autolrs"])


def test_a_sigkilled_trainer_restarted_from_its_checkpoint_keeps_the_schedule(live_server, tmp_path):
    server = live_server(tmp_path / "state")
    config, max_steps = {"T_0": 15, "eta_min": 0.001, "chunk": 5}, 60
    checkpoint = kill_after_the_server_moved_on(server, tmp_path, "cosine", config, max_steps, 20, ahead=15)
    model, optimizer, lrs, state = restart(checkpoint)
    assert state["version"] == 2 and state["credential"]
    with AutoLRS(model, optimizer, tuner="cosine", config=config, server=server.endpoint, job="killed-job",
                 max_steps=max_steps, timeout=10.0) as cb:
        cb.load_state_dict(state)
        batches = DigitsBatches(seed=1)
        while not cb.should_stop:
            lrs.append(optimizer.param_groups[0]["lr"])
            cb.step(train_step(model, optimizer, batches))
    # The server had moved 15 steps past the checkpoint; the schedule went back to it.
    expected = torch_scheduler_lrs(lambda opt: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        opt, T_0=15, eta_min=0.001), 0.1, max_steps)
    assert len(lrs) == max_steps and lrs == expected
    hellos = [r for r in decisions(server, "killed-job") if r["kind"] == "hello"]
    assert [h["resumed"] for h in hellos] == [False, True] and hellos[-1]["client_step"] == 20


def test_a_sigkilled_autolrs_trainer_continues_from_its_checkpoint(live_server, tmp_path):
    server = live_server(tmp_path / "state")
    config = {"tau": 10, "tau_max": 20, "k": 3, "trial_fraction": 0.5, "lr_min": 0.01, "lr_max": 0.5}
    max_steps, save_at = 150, 40
    # Saved in a stage's trials (stage 1: 3 trials of 5 steps and 10 exploit steps; stage 2 from
    # step 25: 3 trials of 10 steps), killed after the server moved on into the exploitation.
    checkpoint = kill_after_the_server_moved_on(server, tmp_path, "autolrs", config, max_steps, save_at, ahead=15)
    model, optimizer, _, state = restart(checkpoint)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with AutoLRS(model, optimizer, tuner="autolrs", config=config, server=server.endpoint, job="killed-job",
                     max_steps=max_steps, timeout=10.0) as cb:
            cb.load_state_dict(state)
            assert cb.global_step == save_at
            batches = DigitsBatches(seed=1)
            while not cb.should_stop:
                cb.step(train_step(model, optimizer, batches))
    # No step lost: the job goes on from the checkpoint's step to the budget, report after report.
    assert cb.global_step == max_steps
    records = decisions(server, "killed-job")
    hello = max(i for i, r in enumerate(records) if r["kind"] == "hello")
    assert records[hello]["resumed"] and records[hello]["client_step"] == save_at
    steps = [save_at] + [r["step"] for r in records[hello + 1:] if r["kind"] == "report"]
    assert steps[-1] == max_steps and all(b > a for a, b in zip(steps, steps[1:]))
    # None trained twice at a trial's LR: the stage the dead trainer was in starts again from the
    # checkpoint (its own first checkpoint), so no plan restores a slot the new process lacks.
    first = records[hello]["plan"]
    assert [a["op"] for a in first][:1] == ["checkpoint"] and first[-1].get("search")
    assert not [w for w in caught if "does not exist" in str(w.message)]
