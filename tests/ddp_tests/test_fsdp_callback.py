"""The callback under FSDP2 (``torch.distributed.fsdp.fully_shard``): two gloo ranks on CPU, each
holding half of every parameter. Each rank snapshots and restores its own shards (bitwise, in
every checkpoint placement), every rank trains at the LRs the server's log says, and the server
gets the mean of the ranks' losses and evaluations, as under DDP (see ddp_worker.py)."""

from __future__ import annotations

import json
import time

import pytest
import torch

import ddp_worker
from ddp_testlib import decisions, lr_history
from test_ddp_callback import Job, assert_identical_parameters, fork_server, free_port

fully_shard = pytest.importorskip("torch.distributed.fsdp").__dict__.get("fully_shard")
pytestmark = [
    pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                       reason="needs torch.distributed with gloo"),
    pytest.mark.skipif(fully_shard is None, reason="this torch has no FSDP2 (torch.distributed.fsdp.fully_shard)"),
]


def test_each_rank_restores_its_own_shards_bitwise_in_every_placement(tmp_path):
    ctx, port = fork_server(), free_port()
    procs = [ctx.Process(target=ddp_worker.run_store_check, args=(rank, 2, port, str(tmp_path)), daemon=True)
             for rank in range(2)]
    for proc in procs:
        proc.start()
    deadline = time.monotonic() + 120
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
    assert [proc.exitcode for proc in procs] == [0, 0]
    ranks = [json.loads((tmp_path / f"store{r}.json").read_text()) for r in (0, 1)]
    for results in ranks:
        assert sorted(results) == ["cpu", "disk", "memory"]
        for placement, r in results.items():
            assert r["sharded"], placement
            assert r["checks"] == [{"changed": True, "bitwise": True}] * 2, placement
    for placement in ("memory", "cpu", "disk"):  # each rank held half: its own shards only
        local = [ranks[r][placement]["local_elements"] for r in (0, 1)]
        assert sum(local) == ranks[0][placement]["model_elements"] and 0 < local[0] < sum(local)


@pytest.mark.parametrize("checkpoint", ["memory", "cpu"])
def test_fsdp2_ranks_apply_the_servers_lrs_and_average_losses(live_server, digits, tmp_path, checkpoint):
    server = live_server(tmp_path / "state")
    out, budget = tmp_path / "run", 240
    r0, r1 = Job(server.endpoint, "fsdp-autolrs", out, digits, budget, fsdp="", checkpoint=checkpoint).finish()

    assert r0["steps"] == r1["steps"] == budget and r0["should_stop"] and r1["should_stop"]
    assert_identical_parameters(out)  # the gathered parameters, the same on both ranks
    records = decisions(tmp_path / "state", "fsdp-autolrs")
    assert len({r["client_id"] for r in records}) == 1  # rank 0 talks for both
    expected = lr_history(records)
    assert r0["lrs"] == r1["lrs"] == expected  # every rank at the server's LR, every step
    assert len(set(expected)) >= 6  # the search searched
    assert r0["restores"] == r1["restores"] > 0  # every rank restored its shards at the trials' ends

    reported = [value for r in records if r["kind"] == "report" for _, value in r["observation"]["evals"]]
    own = list(zip(r0["val_values"], r1["val_values"]))
    assert len(reported) == len(own) > 0 and all(a != b for a, b in own)
    assert reported == [(a + b) / 2 for a, b in own]
    for r in records:
        if r["kind"] == "report" and r["observation"]["n_losses"]:
            step = r["step"]
            assert r["observation"]["last_loss"] == (r0["losses"][step - 1] + r1["losses"][step - 1]) / 2
