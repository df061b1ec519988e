"""A real training job whose tuner process is SIGKILLed while it holds the job's report: the
server answers that report ``internal``, the callback sends it again, a new tuner process takes
the job with its state intact, and the job goes on on plan (real server, real callback, real
training on digits)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import torch

from autolrs.callbacks import AutoLRS, AutoLRSWarning
from autolrs.testing.training import DigitsBatches, make_mlp, torch_scheduler_lrs, train_step
from autolrs.wire import protocol

sys.path.insert(0, str(Path(__file__).parent.parent))
from shared_testlib import MidRequestKill, wait_for_tuner_processes  # noqa: E402

# One segment per 20 steps (the guard off: it would cut them to 10), so a retried plan that
# comes back some steps late still starts inside its segment.
KNOBS = {"T_0": 15, "eta_min": 0.001, "chunk": 20, "guard": False}
STEPS, KILL_AT = 40, 20  # the report sent after step 20 (the end of a segment) is the one in flight
RETRY_S = 0.01


def train(endpoint: str, state_dir: Path, job: str, kill: bool) -> tuple[list[float], dict | None]:
    """The LR of every step, and the tuner process killed (None without a kill)."""
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    lrs: list[float] = []
    killed = None
    # A long timeout: the internal reply comes back within the step that sent the report.
    with AutoLRS(model, optimizer, tuner="cosine", config=KNOBS, server=endpoint, job=job, max_steps=STEPS,
                 timeout=60.0, retry_interval=RETRY_S) as cb:
        batches = DigitsBatches()
        while not cb.should_stop:
            step = cb.global_step
            if kill and step == KILL_AT - 1:
                killer = MidRequestKill(endpoint, job).arm()
            lrs.append(optimizer.param_groups[0]["lr"])
            cb.step(train_step(model, optimizer, batches))
            if kill and step == KILL_AT - 1:
                killed = killer.join()  # the report was answered internal: its retry is deferred
                time.sleep(3 * RETRY_S)  # so that it is due at the next step, which sends it
            if kill and step == KILL_AT:
                # Training may go on meanwhile (fail open); waiting keeps the lateness small, so
                # the retried plan starts inside its segment.
                wait_for(lambda: KILL_AT in [s for s, _ in report_plans(state_dir, job)])
                stale = lrs[-1]
            if kill and KILL_AT < step < KILL_AT + 10 and lrs[-1] == stale:
                # Should the plan sent ahead be missing, the reply is on its way (the server logs
                # a decision before it answers) and the callback looks for it after 1, 2, 4 ...
                # steps: slow steps until it is taken.
                time.sleep(0.2)
    return lrs, killed


def wait_for(condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true"
        time.sleep(0.01)


def report_plans(state_dir: Path, job: str) -> list:
    path = state_dir / "jobs" / job / "decisions.jsonl"
    records = [protocol.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []
    return [(r["step"], r["plan"]) for r in records if r["kind"] == "report"]


def test_training_goes_on_on_plan_when_its_tuner_process_is_killed_mid_request(live_server, tmp_path):
    server = live_server(tmp_path / "state", "--processes", "2")
    wait_for_tuner_processes(server.endpoint)
    reference, _ = train(server.endpoint, server.state_dir, "undisturbed", kill=False)
    with pytest.warns(AutoLRSWarning, match="failed on a report of job killed"):  # said once, training goes on
        lrs, killed = train(server.endpoint, server.state_dir, "killed", kill=True)

    expected = torch_scheduler_lrs(lambda opt: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        opt, T_0=15, eta_min=0.001), 0.1, STEPS)
    assert reference == expected
    assert killed is not None and "during a request of job killed" in server.log()
    # While the report waited for its retry, training went on at the chunk the server had sent
    # ahead with the last plan (fail open, on schedule); the retried report's plan agreed with it.
    assert lrs == expected
    # The server's decisions: the same plans at the same steps as the undisturbed job, each
    # report applied once (the killed one by its retry).
    assert report_plans(server.state_dir, "killed") == report_plans(server.state_dir, "undisturbed")
