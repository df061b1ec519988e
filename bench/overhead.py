"""Per-step cost of the callback: the same training loop bare and with the callback driven by a
server in another process.

A small MLP on scikit-learn's digits (a few ms a step on a CPU). For each tuner, one training
loop alternates blocks of steps without and with ``cb.step`` (the callback's server round trips
fall inside its blocks) and the medians of the block times are compared, so machine noise hits
both alike. Prints a table and writes JSON (default bench/out/overhead.json).

    python bench/overhead.py [--blocks 40] [--block 50] [--out bench/out/overhead.json]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from autolrs.callbacks import AutoLRS
from autolrs.server import ServerProcess
from benchlib import write_report

TARGET_RATIO = 1.02
MODES = {
    "constant": {},
    "cosine": {"T_0": 400, "T_mult": 2},
}


def make_problem(batch: int, hidden: int):
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden),
                                torch.nn.ReLU(), torch.nn.Linear(hidden, 10))
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, len(x), (batch,), generator=g) for _ in range(64)]
    return model, [(x[i], y[i]) for i in batches]


def measure(mode: str, endpoint: str, batch: int, hidden: int, blocks: int, block: int) -> dict:
    """Alternate blocks of ``block`` steps without and with ``cb.step`` on one model, so load
    drifts hit both alike; the callback's round trips happen inside its blocks."""
    model, batches = make_problem(batch, hidden)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    callback = AutoLRS(model, optimizer, tuner=mode, config=MODES[mode], server=endpoint, job=f"overhead-{mode}")
    step = 0

    def timed_block(use_callback: bool) -> float:
        nonlocal step
        started = time.perf_counter()
        for _ in range(block):
            xb, yb = batches[step % len(batches)]
            step += 1
            optimizer.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            loss.backward()
            optimizer.step()
            if use_callback:
                callback.step(loss)
        return (time.perf_counter() - started) / block

    try:
        for _ in range(3):
            timed_block(False)  # warm caches and the allocator
        bare, with_cb = [], []
        for i in range(blocks):
            order = (False, True) if i % 2 == 0 else (True, False)
            for use_callback in order:
                (with_cb if use_callback else bare).append(timed_block(use_callback))
        callback_steps = callback.global_step
        round_trips = callback.reports
    finally:
        callback.close()
    return {"bare_ms": statistics.median(bare) * 1e3, "callback_ms": statistics.median(with_cb) * 1e3,
            "round_trips_per_1000_steps": 1000 * round_trips / callback_steps}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--blocks", type=int, default=40, help="pairs of bare/callback blocks per tuner")
    p.add_argument("--block", type=int, default=50, help="steps per block")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: steadier timings)")
    p.add_argument("--out", default="bench/out/overhead.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    rows = []
    with tempfile.TemporaryDirectory() as tmp, ServerProcess(Path(tmp) / "state", lifeline=True) as server:
        for mode in MODES:
            m = measure(mode, server.endpoint, args.batch, args.hidden, args.blocks, args.block)
            rows.append({"tuner": mode, **m, "ratio": m["callback_ms"] / m["bare_ms"]})
    print(f"{'tuner':<10} {'bare ms/step':>12} {'with callback':>14} {'ratio':>7} {'round trips/1000 steps':>24}")
    for r in rows:
        print(f"{r['tuner']:<10} {r['bare_ms']:12.3f} {r['callback_ms']:14.3f} {r['ratio']:7.3f} "
              f"{r['round_trips_per_1000_steps']:24.1f}")
    worst = max(r["ratio"] for r in rows)
    verdict = "meets" if worst < TARGET_RATIO else "misses"
    print(f"worst ratio {worst:.3f}: {verdict} the target of < {TARGET_RATIO} (callback adds under 2%)")
    report = {"benchmark": "callback overhead", "blocks": args.blocks, "block_steps": args.block,
              "batch": args.batch, "hidden": args.hidden, "threads": args.threads,
              "target_ratio": TARGET_RATIO, "worst_ratio": worst, "rows": rows}
    write_report(args.out, report)
    return report


if __name__ == "__main__":
    main()
