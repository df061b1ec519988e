"""Per-step cost of the callback under DDP: 2 gloo ranks on CPU, the same training loop bare
and with the callback, online and with no server answering.

Each rank trains a small MLP on scikit-learn's digits in DistributedDataParallel (the ranks
are forked with the environment torchrun sets). One loop alternates blocks of steps without
and with ``cb.step`` so machine noise hits both alike; rank 0's block medians are compared:

* ``online``: a server runs the ``cosine`` tuner (one report per 500 steps, each with one
  ``all_reduce`` of the segment's losses);
* ``server down``: the callback points at a port nobody answers, so a request stays pending
  and every step costs one broadcast of a 1-element flag (the price of staying in step).

    python bench/ddp_overhead.py [--blocks 30] [--block 50] [--out bench/out/ddp_overhead.json]
"""

from __future__ import annotations

import argparse
import importlib
import json
import multiprocessing
import os
import socket
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

from autolrs.server import ServerProcess
from benchlib import write_report

WORLD = 2
TARGET_RATIO = 1.02  # the single-process target of bench/overhead.py


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_main(rank: int, port: int, endpoint: str, args: argparse.Namespace, result_path: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist
    from sklearn.datasets import load_digits
    from torch.nn.parallel import DistributedDataParallel

    from autolrs.callbacks import AutoLRS

    dist.init_process_group("gloo")
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32)[rank::WORLD] / 16.0
    y = torch.tensor(data.target)[rank::WORLD]
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, args.hidden), torch.nn.ReLU(), torch.nn.Linear(args.hidden, 10))
    model = DistributedDataParallel(net)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(rank)
    batches = [torch.randint(0, len(x), (args.batch,), generator=g) for _ in range(64)]
    step = 0

    def timed_block(callback) -> float:
        nonlocal step
        started = time.perf_counter()
        for _ in range(args.block):
            idx = batches[step % len(batches)]
            step += 1
            optimizer.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
            if callback is not None:
                callback.step(loss)
        return (time.perf_counter() - started) / args.block

    rows = []
    silent = f"tcp://127.0.0.1:{free_port() if rank == 0 else 0}"  # only rank 0 connects anywhere
    for name, server, timeout in (("online", endpoint, 5.0), ("server down", silent, 0.5)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            callback = AutoLRS(model, optimizer, tuner="cosine", config={"T_0": 400, "T_mult": 2}, server=server,
                               job=f"ddp-overhead-{name.replace(' ', '-')}", timeout=timeout, retry_interval=1.0)
        try:
            for _ in range(3):
                timed_block(None)  # warm caches and the allocator
            bare, with_cb = [], []
            for i in range(args.blocks):
                order = (False, True) if i % 2 == 0 else (True, False)
                for use in order:
                    (with_cb if use else bare).append(timed_block(callback if use else None))
            online = callback.online
        finally:
            callback.close()
        rows.append({"mode": name, "bare_ms": statistics.median(bare) * 1e3,
                     "callback_ms": statistics.median(with_cb) * 1e3, "reports": callback.reports,
                     "online_at_end": online})
    if rank == 0:
        Path(result_path).write_text(json.dumps(rows))
    dist.barrier()
    dist.destroy_process_group()


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--blocks", type=int, default=30, help="pairs of bare/callback blocks per mode")
    p.add_argument("--block", type=int, default=50, help="steps per block")
    p.add_argument("--batch", type=int, default=128, help="per rank")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--out", default="bench/out/ddp_overhead.json")
    args = p.parse_args(argv)

    importlib.import_module("torch._dynamo")  # DDP imports it on first use: once, before forking
    ctx = multiprocessing.get_context("fork")
    with tempfile.TemporaryDirectory() as tmp, ServerProcess(Path(tmp) / "state", lifeline=True) as server:
        result = Path(tmp) / "rows.json"
        port = free_port()
        procs = [ctx.Process(target=rank_main, args=(r, port, server.endpoint, args, str(result))) for r in range(WORLD)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join()
        if any(proc.exitcode for proc in procs):
            raise SystemExit(f"a rank failed: exit codes {[proc.exitcode for proc in procs]}")
        rows = json.loads(result.read_text())
    for r in rows:
        r["ratio"] = r["callback_ms"] / r["bare_ms"]
    print(f"{'mode':<12} {'bare ms/step':>12} {'with callback':>14} {'ratio':>7} {'reports':>8}")
    for r in rows:
        print(f"{r['mode']:<12} {r['bare_ms']:12.3f} {r['callback_ms']:14.3f} {r['ratio']:7.3f} {r['reports']:8d}")
    report = {"benchmark": "callback overhead under DDP", "world_size": WORLD, "backend": "gloo",
              "blocks": args.blocks, "block_steps": args.block, "batch_per_rank": args.batch, "hidden": args.hidden,
              "target_ratio": TARGET_RATIO, "load_average": os.getloadavg()[0], "rows": rows}
    write_report(args.out, report)
    return report


if __name__ == "__main__":
    main()
