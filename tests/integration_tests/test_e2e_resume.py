"""A trainer that crashes and restarts from its own checkpoint carries on with the same tuning
job: AutoLRS.state_dict() saved beside the model's and the optimizer's, load_state_dict() in a
new process, a real server in between. And the job's summary arrives with the goodbye reply."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

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
    with AutoLRS(model, optimizer, tuner="step", config={"step_size": 5, "gamma": 0.5, "chunk": 4},
                 server=server.endpoint, job="summary-job", max_steps=12) as cb:
        batches = DigitsBatches()
        while not cb.should_stop:
            cb.step(train_step(model, optimizer, batches))
        assert cb.summary is None
    assert {k: cb.summary[k] for k in ("step", "lr")} == {"step": 12, "lr": 0.025}
    assert cb.summary["guard"]["rollbacks"] == 0  # the divergence guard's account, beside the tuner's
    assert decisions(server, "summary-job")[-1]["summary"] == cb.summary
