"""The callback under DDP: two gloo ranks on CPU train digits with DistributedDataParallel
while a real server runs AutoLRS for them (see ddp_worker.py). The ranks are forked (by a
fork server) with the environment torchrun sets; test_ddp_example.py runs real torchrun."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import time
from pathlib import Path

import pytest
import torch

import ddp_worker
from autolrs.actions import run, set_lr
from autolrs.testing.peer import ScriptedPeer, ScriptedTuner
from ddp_testlib import decisions, lr_history

CONFIG = {"lr_min": 1e-3, "lr_max": 1.0, "tau": 20, "k": 3, "tau_max": 40, "trial_fraction": 0.25, "val_points": 5}

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="needs torch.distributed with gloo")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fork_server():
    """A multiprocessing context whose ranks fork from a clean server process that has already
    imported torch, DistributedDataParallel's torch._dynamo (seconds on first use) and the
    worker. Not plain fork: this test process may hold ZeroMQ threads (a scripted peer, other
    tests' clients), and libzmq used in a child forked from those can deadlock."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "torch._dynamo", "torch.nn.parallel", "ddp_worker"])
    return ctx


class Job:
    """Two ranks of ddp_worker.main forked by :func:`fork_server`; output goes to ``out``."""

    def __init__(self, endpoint: str, job: str, out: Path, digits, steps: int, **options):
        out.mkdir(parents=True, exist_ok=True)
        self.out = out
        data = out / "digits.pt"
        torch.save(digits, data)
        argv = ["--server", endpoint, "--job", job, "--out", str(out), "--data", str(data), "--steps", str(steps),
                "--config", json.dumps(CONFIG)]
        for key, value in options.items():  # value "" is a flag
            argv += [f"--{key.replace('_', '-')}"] + ([str(value)] if value != "" else [])
        ctx = fork_server()
        port = free_port()
        self.procs = [ctx.Process(target=ddp_worker.run_rank, args=(rank, 2, port, argv), daemon=True)
                      for rank in range(2)]
        for proc in self.procs:
            proc.start()

    def running(self) -> bool:
        return all(proc.is_alive() for proc in self.procs)

    def finish(self, timeout: float = 90) -> tuple[dict, dict]:
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            proc.join(max(0.0, deadline - time.monotonic()))
        hung = [rank for rank, proc in enumerate(self.procs) if proc.is_alive()]
        stacks = ""
        for rank in hung:
            os.kill(self.procs[rank].pid, signal.SIGUSR1)  # ddp_worker dumps its stacks
            time.sleep(0.5)
            stacks += f"--- rank {rank}\n" + (self.out / f"rank{rank}.stacks").read_text()[-3000:]
            self.procs[rank].kill()
            self.procs[rank].join()
        assert not hung, f"rank(s) {hung} did not finish in {timeout} s:\n{stacks}"
        assert [proc.exitcode for proc in self.procs] == [0, 0]
        return tuple(json.loads((self.out / f"rank{r}.json").read_text()) for r in (0, 1))


def assert_identical_parameters(out: Path) -> None:
    p0, p1 = (torch.load(out / f"rank{r}.pt") for r in (0, 1))
    assert p0.keys() == p1.keys()
    for name in p0:
        assert torch.equal(p0[name], p1[name]), name  # bitwise


def test_two_gloo_ranks_stay_identical_and_apply_the_servers_lrs(live_server, digits, tmp_path):
    server = live_server(tmp_path / "state")
    out, budget = tmp_path / "run", 240
    r0, r1 = Job(server.endpoint, "ddp-autolrs", out, digits, budget, check_errors="").finish()

    # Errors at start reach every rank (none is left waiting in a collective): the server's
    # refusal, and rank 0's own failure to encode the hello.
    for r in (r0, r1):
        assert [e[0] for e in r["errors"]] == ["AutoLRSConfigError", "TypeError"], r["errors"]
        assert "no_such_tuner" in r["errors"][0][1]

    assert r0["job"] == r1["job"] == "ddp-autolrs"
    assert r0["steps"] == r1["steps"] == budget and r0["should_stop"] and r1["should_stop"]
    assert_identical_parameters(out)

    records = decisions(tmp_path / "state", "ddp-autolrs")
    # Only rank 0 talked: one client, one hello, one goodbye, one report per segment.
    assert len({r["client_id"] for r in records}) == 1
    kinds = [r["kind"] for r in records]
    assert kinds.count("hello") == 1 and kinds[-1] == "goodbye" and kinds.count("report") == r0["reports"]
    # Both ranks trained every step at the LR the server's log says, and the search did search.
    expected = lr_history(records)
    assert r0["lrs"] == r1["lrs"] == expected
    assert len(set(expected)) >= 6
    assert any(s["last_stage"] for s in (r.get("summary") or {} for r in records) if s.get("last_stage"))

    # Validation mode ran: the server got the mean of the two ranks' own val_fn results.
    reported = [value for r in records if r["kind"] == "report" for _, value in r["observation"]["evals"]]
    own = list(zip(r0["val_values"], r1["val_values"]))
    assert len(reported) == len(own) > 0
    assert all(a != b for a, b in own)  # different shards: averaging matters
    assert reported == [(a + b) / 2 for a, b in own]
    # ... and the mean of their losses: each report's last loss is the mean of the two ranks'.
    for r in records:
        if r["kind"] == "report" and r["observation"]["n_losses"]:
            step = r["step"]
            assert r["observation"]["last_loss"] == (r0["losses"][step - 1] + r1["losses"][step - 1]) / 2


def test_ranks_train_on_in_step_when_the_server_dies(live_server, digits, tmp_path):
    state = tmp_path / "state"
    server = live_server(state)
    out, budget = tmp_path / "run", 300
    job = Job(server.endpoint, "ddp-killed", out, digits, budget, timeout=1.0, retry_interval=0.3)
    log = state / "jobs" / "ddp-killed" / "decisions.jsonl"
    deadline = time.monotonic() + 90
    while not (log.exists() and len(log.read_text().splitlines()) >= 3):
        assert job.running(), "a rank ended before the server was killed"
        assert time.monotonic() < deadline, "the job made no progress with the server"
        time.sleep(0.005)
    server.kill()  # SIGKILL mid-run
    r0, r1 = job.finish()

    assert r0["steps"] == r1["steps"] == budget  # nobody stopped or hung
    assert not r0["should_stop"] and not r1["should_stop"]
    assert_identical_parameters(out)
    assert r0["lrs"] == r1["lrs"]
    records = decisions(state, "ddp-killed")
    assert records[-1]["kind"] != "goodbye"
    # The ranks followed the plans until the server died (the last logged one may not have been
    # delivered), then trained on at one LR.
    delivered = lr_history(records[:-1])
    assert r0["lrs"][:len(delivered)] == delivered
    assert len(set(r0["lrs"][-150:])) == 1
    # Fail-open warned once, on rank 0 only.
    assert sum("ServerUnavailableWarning" in w for w in r0["warnings"]) == 1
    assert not r1["warnings"]


def test_ranks_agree_through_a_deferred_request_and_a_lost_job(digits, tmp_path):
    """The server fails a report (internal: retried after retry_interval, on rank 0's clock),
    then forgets the job (unknown_job: a fresh hello): every rank acts on every outcome at the
    same step."""
    script = ScriptedTuner([
        [set_lr(0.05), run(20, 0)],
        [set_lr(0.2), run(20, 20)],  # the deferred report's answer, applied late: steps skipped
        [set_lr(0.01), run(20, 0)],  # the second hello's
    ], errors={1: "internal", 3: "unknown_job"})
    peer = ScriptedPeer(script)
    try:
        out = tmp_path / "run"
        r0, r1 = Job(peer.endpoint, "ddp-scripted", out, digits, 5000, tuner="scripted",
                     timeout=2.0, retry_interval=0.2).finish()
    finally:
        peer.close()
    assert r0["should_stop"] and r1["should_stop"] and r0["steps"] == r1["steps"] < 5000
    assert r0["lrs"] == r1["lrs"]
    assert_identical_parameters(out)
    kinds = [protocol_kind(r) for r in script.applied]
    assert kinds == ["hello", "report", "report", "report", "hello", "report"]
    assert len({r["client_id"] for r in peer.received}) == 1  # rank 0 alone talked
    lrs = r0["lrs"]
    assert lrs[:20] == [0.05] * 20 and 0.2 in lrs and lrs[-1] == 0.01
    # The deferred report was resent after retry_interval while both ranks trained on at 0.05.
    deferred = lrs.index(0.2)
    assert deferred > 20 and set(lrs[20:deferred]) == {0.05}


def protocol_kind(request: dict) -> str:
    return request["type"][: -len("_request")]


def test_distributed_option_is_checked_before_any_traffic():
    from autolrs.callbacks import AutoLRS

    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    assert not torch.distributed.is_initialized()
    with pytest.raises(ValueError, match="init_process_group"):
        AutoLRS(model, optimizer, server="tcp://127.0.0.1:1", distributed=True)
    with pytest.raises(ValueError, match="True, False or None"):
        AutoLRS(model, optimizer, server="tcp://127.0.0.1:1", distributed="yes")


def test_two_gloo_ranks_roll_back_identically(live_server, digits, tmp_path):
    """A far too large LR: the divergence guard restores its snapshot on every rank at the same
    step and cuts the LR alike; the replicas stay bitwise identical."""
    server = live_server(tmp_path / "state")
    out, budget = tmp_path / "run", 200
    config = json.dumps({"lr": 20.0, "guard_every": 10})
    r0, r1 = Job(server.endpoint, "ddp-guard", out, digits, budget, tuner="constant", config=config).finish()
    assert r0["steps"] == r1["steps"] and r0["should_stop"] and r1["should_stop"]
    assert_identical_parameters(out)
    records = decisions(tmp_path / "state", "ddp-guard")
    rollbacks = [r for r in records if r["kind"] == "report" and (r["summary"]["guard"]["action"] or {}).get("action")
                 in ("rollback", "stop")]
    assert rollbacks and all(r["plan"][0] == {"op": "restore", "slot": "guard"} for r in rollbacks)
    # Both ranks trained every step at the LR of the server's plans, cuts included.
    assert r0["lrs"] == r1["lrs"] == lr_history(records)[:len(r0["lrs"])]
    assert min(r0["lrs"]) < 20.0
