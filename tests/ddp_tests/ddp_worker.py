"""One rank of a DDP training job on scikit-learn's digits, tuned by an autolrs server.

Runs as a script under ``python -m torch.distributed.run --nproc_per_node 2`` (gloo, CPU), or
through :func:`run_rank` in processes the tests fork (no interpreter start-up, no torch import
per rank: seconds less per test on a loaded 2-core machine). Each rank trains the same MLP wrapped in DistributedDataParallel on its own shard of the
data, with the callback unchanged, and writes what it saw to ``--out``:
``rank<r>.json`` (steps trained, the LR and its own loss of each step, its own val_fn results,
warnings) and
``rank<r>.pt`` (the final parameters).
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import signal
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

from autolrs.testing.training import make_mlp


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--server", required=True)
    p.add_argument("--job", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--data", required=True, help="torch.save'd (x, y) of the digits (no sklearn import per rank)")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--tuner", default="autolrs")
    p.add_argument("--config", default="{}", help="tuner config as JSON")
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--retry-interval", type=float, default=5.0)
    p.add_argument("--check-errors", action="store_true",
                   help="first build callbacks that must fail (an unknown tuner, a config JSON cannot encode)")
    p.add_argument("--fsdp", action="store_true", help="shard the model with FSDP2's fully_shard instead of DDP")
    p.add_argument("--checkpoint", default="memory", help="the callback's checkpoint placement")
    return p.parse_args(argv)


def run_rank(rank: int, world: int, port: int, argv: list[str]) -> None:
    """One rank in a forked process: the environment torchrun would set, then :func:`main`."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    # SIGUSR1 writes every thread's stack to rank<r>.stacks: what a test shows when a rank hangs.
    out = Path(parse_args(argv).out)
    stacks = open(out / f"rank{rank}.stacks", "w")
    faulthandler.register(signal.SIGUSR1, file=stacks, all_threads=True)
    main(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()

    from torch.nn.parallel import DistributedDataParallel

    from autolrs.callbacks import AutoLRS

    x, y = torch.load(args.data)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    val, train = order[:300], order[300:]
    # Each rank its own shard (what DistributedSampler does), so the ranks' losses differ.
    train_x, train_y = x[train[rank::world]], y[train[rank::world]]
    val_x, val_y = x[val[rank::world]], y[val[rank::world]]

    if args.fsdp:
        model = inner = shard(make_mlp(seed=1))
    else:
        model = DistributedDataParallel(make_mlp(seed=1))
        inner = model.module
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    val_values: list[float] = []

    def val_fn() -> float:
        with torch.no_grad():
            value = torch.nn.functional.cross_entropy(inner(val_x), val_y).item()
        val_values.append(value)
        return value

    errors = []  # [type name, message] of each failed construction, on this rank
    if args.check_errors:
        for options in ({"tuner": "no_such_tuner"}, {"tuner": "autolrs", "config": {"x": object()}}):
            try:
                AutoLRS(model, optimizer, server=args.server, job=f"{args.job}-bad", timeout=args.timeout, **options)
            except Exception as exc:  # noqa: BLE001 - recorded for the test
                errors.append([type(exc).__name__, str(exc)])

    lrs: list[float] = []
    losses: list[float] = []  # this rank's own loss of every step
    g = torch.Generator().manual_seed(100 + rank)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cb = AutoLRS(model, optimizer, tuner=args.tuner, config=json.loads(args.config), server=args.server,
                     job=args.job, val_fn=val_fn, max_steps=args.steps, seed=0, timeout=args.timeout,
                     retry_interval=args.retry_interval, checkpoint=args.checkpoint)
        with cb:
            while len(lrs) < args.steps and not cb.should_stop:
                idx = torch.randint(0, len(train_x), (16,), generator=g)
                optimizer.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(train_x[idx]), train_y[idx])
                loss.backward()
                lrs.append(optimizer.param_groups[0]["lr"])
                optimizer.step()
                cb.step(loss)
                losses.append(loss.item())
            stopped = cb.should_stop

    out = Path(args.out)
    # The whole parameters (an FSDP2 rank gathers the other ranks' shards: a collective).
    torch.save({k: full(v).detach().clone() for k, v in inner.state_dict().items()}, out / f"rank{rank}.pt")
    (out / f"rank{rank}.json").write_text(json.dumps({
        "rank": rank, "world": world, "job": cb.job, "steps": len(lrs), "lrs": lrs, "losses": losses, "val_values": val_values,
        "should_stop": stopped, "errors": errors, "reports": cb.reports, "restores": len(cb.discarded),
        "warnings": [f"{w.category.__name__}: {w.message}" for w in caught],
    }))
    dist.barrier()
    dist.destroy_process_group()


def shard(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` sharded over the ranks with FSDP2: each Linear a unit of its own, then the root."""
    from torch.distributed.fsdp import fully_shard

    for layer in model.modules():
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    return fully_shard(model)


def full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def run_store_check(rank: int, world: int, port: int, out: str) -> None:
    """In a forked rank: snapshot and restore an FSDP2 model and its Adam state in each
    checkpoint placement, twice; ``store<r>.json`` says per placement whether this rank's shards
    came back bitwise, and how many elements its shards hold against the whole model."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    from autolrs.callbacks.state import CheckpointStore

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    results = {}
    for storage in ("memory", "cpu", "disk"):
        model = shard(make_mlp(seed=1))
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        g = torch.Generator().manual_seed(rank)

        def step() -> None:
            x, y = torch.randn(16, 64, generator=g), torch.randint(0, 10, (16,), generator=g)
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()

        for _ in range(3):
            step()
        store = CheckpointStore(model, optimizer, storage=storage, directory=out)
        store.save("s")
        saved = _local_state(model, optimizer)
        checks = []
        for steps in (3, 2):  # train on (the state changes), restore; twice from the same slot
            for _ in range(steps):
                step()
            changed = _local_state(model, optimizer)
            store.restore("s")
            now = _local_state(model, optimizer)
            checks.append({"changed": any(not torch.equal(saved[k], changed[k]) for k in saved),
                           "bitwise": saved.keys() == now.keys() and all(torch.equal(saved[k], now[k]) for k in saved)})
        store.close()
        results[storage] = {"checks": checks, "local_elements": sum(p.to_local().numel() for p in model.parameters()),
                            "model_elements": sum(full(p).numel() for p in model.parameters()),
                            "sharded": all(hasattr(p, "to_local") for p in model.parameters())}
    Path(out, f"store{rank}.json").write_text(json.dumps(results))
    dist.barrier()
    dist.destroy_process_group()


def _local_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """This rank's shards of the model and optimizer state, as plain copies."""
    local = {f"model.{k}": (v.to_local() if hasattr(v, "to_local") else v).detach().clone()
             for k, v in model.state_dict().items()}
    for i, state in enumerate(optimizer.state.values()):
        for k, v in state.items():
            if isinstance(v, torch.Tensor):
                local[f"opt{i}.{k}"] = (v.to_local() if hasattr(v, "to_local") else v).detach().clone()
    return local


if __name__ == "__main__":
    main()
