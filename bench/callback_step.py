"""Micro-benchmark of ``AutoLRS.step`` inside a long run segment (not collected by pytest).

    python bench/callback_step.py [--device cuda]

Prints the time of 10,000 ``cb.step(loss)`` calls against an empty loop, for a segment without
``lrs``, with a constant ``lrs`` list and with an LR that changes every step, and the overhead
on a real training step of about 2 ms (a small MLP on the digits, interleaved blocks).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from autolrs.actions import run
from autolrs.callbacks import AutoLRS
from autolrs.testing.peer import ScriptedPeer, ScriptedTuner  # a fake server answering with fixed plans
from autolrs.testing.training import digits
from benchlib import write_report

N = 10_000


def per_call(fn, n=N, repeats=7) -> float:
    best = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(n)
        best.append((time.perf_counter() - t0) / n)
    return min(best)


def bench_calls(device: str) -> dict:
    model = torch.nn.Linear(4, 4).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    w = torch.ones((), device=device, requires_grad=True)
    loss = w * 2.0  # a loss with a grad_fn, as in training: step() must detach it

    def nothing(n):
        for _ in range(n):
            pass

    empty = per_call(nothing)
    results = {"empty_loop_ns": empty * 1e9}
    print(f"empty loop: {empty * 1e9:8.1f} ns per iteration")
    steps = N * 8 * 2
    cases = {
        "run segment, no lrs": [run(10**7, 0)],
        "run segment, constant lrs": [run(steps, 0, lrs=[0.1] * steps)],
        "run segment, lrs change every step": [run(steps, 0, lrs=[0.1 + 1e-6 * i for i in range(steps)])],
    }
    for name, plan in cases.items():
        peer = ScriptedPeer(ScriptedTuner([plan]))
        try:
            with AutoLRS(model, optimizer, server=peer.endpoint, timeout=10.0) as cb:
                def stepping(n):
                    for _ in range(n):
                        cb.step(loss)
                t = per_call(stepping)
                if device == "cuda":
                    torch.cuda.synchronize()
            print(f"{name:38s}: {t * 1e6:6.2f} us per step() ({(t - empty) * 1e6:5.2f} us above the empty loop)")
            results[name] = {"us_per_step": t * 1e6}
        finally:
            peer.close()
    return results


def bench_training(device: str, hidden: int) -> dict:
    x, y = digits()
    x, y = x.to(device), y.to(device)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden),
                                torch.nn.ReLU(), torch.nn.Linear(hidden, 10)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    xb, yb = x[:256], y[:256]

    def one_step():
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        loss.backward()
        optimizer.step()
        return loss

    peer = ScriptedPeer(ScriptedTuner([[run(10**7, 0)]]))
    try:
        with AutoLRS(model, optimizer, server=peer.endpoint, timeout=10.0) as cb:
            for _ in range(50):
                one_step()
            def block_time(use_cb: bool) -> float:
                t0 = time.perf_counter()
                for _ in range(block):
                    loss = one_step()
                    if use_cb:
                        cb.step(loss)
                if device == "cuda":
                    torch.cuda.synchronize()
                return (time.perf_counter() - t0) / block

            plain, with_cb = [], []
            block, pairs = 100, 30
            for i in range(pairs):  # interleaved, alternating order: load drifts hit both alike
                order = (False, True) if i % 2 == 0 else (True, False)
                for use_cb in order:
                    (with_cb if use_cb else plain).append(block_time(use_cb))
    finally:
        peer.close()
    p, c = statistics.median(plain), statistics.median(with_cb)
    print(f"training step ({device}, hidden {hidden}): {p * 1e3:.3f} ms plain, {c * 1e3:.3f} ms with cb.step "
          f"(medians of {pairs} blocks of {block}); overhead {100 * (c - p) / p:+.2f}% "
          "(end-to-end figures are at the mercy of machine load; the per-call numbers above are the signal)")
    return {"plain_ms": p * 1e3, "with_callback_ms": c * 1e3, "overhead_ratio": c / p}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--hidden", type=int, default=256, help="MLP width (256: about 2 ms per step on a CPU core)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="bench/out/callback_step.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report = {"device": args.device, "calls": bench_calls(args.device),
              "training": bench_training(args.device, args.hidden)}
    write_report(args.out, report)


if __name__ == "__main__":
    main()
