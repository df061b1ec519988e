"""Per-step cost of the callback: the same training loop bare and with the callback driven by a
server in another process.

A small MLP on scikit-learn's digits (a few ms a step on a CPU). Bare and callback runs are
interleaved, repeated, and compared by their median time per step, so machine noise hits both
alike. Prints a table and writes JSON (default bench/out/overhead.json).

    python bench/overhead.py [--steps 1000] [--repeats 5] [--out bench/out/overhead.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from autolrs.callbacks import AutoLRS
from autolrs.server.process import ServerProcess

TARGET_RATIO = 1.02
MODES = {
    "bare": None,
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


def run(mode: str, steps: int, endpoint: str, batch: int, hidden: int, job: str) -> dict:
    model, batches = make_problem(batch, hidden)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    callback = None
    if MODES[mode] is not None:
        callback = AutoLRS(model, optimizer, tuner=mode, config=MODES[mode], server=endpoint, job=job)
    started = time.perf_counter()
    for step in range(steps):
        xb, yb = batches[step % len(batches)]
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        loss.backward()
        optimizer.step()
        if callback is not None:
            callback.step(loss)
    elapsed = time.perf_counter() - started
    round_trips = callback.reports if callback is not None else 0
    if callback is not None:
        callback.close()
    return {"seconds": elapsed, "round_trips": round_trips}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: steadier timings)")
    p.add_argument("--out", default="bench/out/overhead.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    times: dict[str, list[float]] = {m: [] for m in MODES}
    trips: dict[str, list[int]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory() as tmp, ServerProcess(Path(tmp) / "state") as server:
        run("bare", 100, server.endpoint, args.batch, args.hidden, "warmup")  # warm caches and allocator
        for rep in range(args.repeats):
            for mode in MODES:
                result = run(mode, args.steps, server.endpoint, args.batch, args.hidden, f"{mode}-{rep}")
                times[mode].append(result["seconds"] / args.steps)
                trips[mode].append(result["round_trips"])

    bare = statistics.median(times["bare"])
    rows = []
    for mode in MODES:
        per_step = statistics.median(times[mode])
        rows.append({"mode": mode, "ms_per_step": per_step * 1e3, "ratio_to_bare": per_step / bare,
                     "round_trips_per_1000_steps": statistics.median(trips[mode]) * 1000 / args.steps,
                     "samples_ms": [t * 1e3 for t in times[mode]]})
    print(f"{'mode':<10} {'ms/step':>8} {'ratio':>7} {'round trips/1000 steps':>24}")
    for r in rows:
        print(f"{r['mode']:<10} {r['ms_per_step']:8.3f} {r['ratio_to_bare']:7.3f} {r['round_trips_per_1000_steps']:24.1f}")
    worst = max(r["ratio_to_bare"] for r in rows)
    verdict = "meets" if worst < TARGET_RATIO else "misses"
    print(f"worst ratio {worst:.3f}: {verdict} the target of < {TARGET_RATIO} (callback adds under 2%)")
    report = {"benchmark": "callback overhead", "steps": args.steps, "repeats": args.repeats,
              "batch": args.batch, "hidden": args.hidden, "threads": args.threads,
              "target_ratio": TARGET_RATIO, "worst_ratio": worst, "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
