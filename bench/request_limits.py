"""The most a job can ask of the server, per tuner: each tuner's knobs at their limits (the
largest chunk, the most trials, the longest history), driven by a simulated client through the
server's dispatcher (no sockets: the server's own work). For every job: the slowest request,
the peak memory a request allocated, the largest reply and ``state.json``, and the number of
requests. Prints a table and writes JSON (default bench/out/request_limits.json).

    python bench/request_limits.py [--out bench/out/request_limits.json] [--only cosine,autolrs]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import tracemalloc
from pathlib import Path

from autolrs.actions import Observation
from autolrs.server.config import load_config
from autolrs.server.dispatcher import Dispatcher
from autolrs.server.sessions import SessionStore
from autolrs.testing import SimulatedClient
from autolrs.tuners import TUNERS
from autolrs.tuners.base import MAX_CHUNK, MAX_STEPS
from autolrs.wire import messages, protocol
from benchlib import write_report

#: Each case: the tuner, its knobs at the limits, the job's facts, and how many requests to send.
CASES = {
    "cosine": ("cosine", {"chunk": MAX_CHUNK, "T_0": MAX_STEPS, "T_mult": 1000}, {"max_steps": None}, 30),
    "step": ("step", {"chunk": MAX_CHUNK, "step_size": 7}, {"max_steps": None}, 30),
    "record": ("record", {"chunk": MAX_CHUNK, "eval_every": 1000}, {"max_steps": None, "has_val_fn": True}, 30),
    "range_test": ("range_test", {"num_iter": 1000, "chunk": 10, "diverge_th": None, "end_lr": 1.0},
                   {"max_steps": None}, 102),
    "autolrs": ("autolrs", {"k": 100, "tau": 200, "tau_max": 400, "trial_fraction": 0.5, "val_points": 1000},
                {"max_steps": None, "has_val_fn": True}, 230),
    "auto": ("auto", {"candidates": 20, "check_fraction": 0.05}, {"max_steps": 200_000, "has_val_fn": True}, 100),
    "loss_diff": ("loss_diff", {"num_evals": 100, "num_subsamples": 100}, {"max_steps": None, "has_probe_fn": True},
                  103),
    "hd": ("hd", {"every": MAX_CHUNK}, {"max_steps": None}, 30),
}


def drive(name: str, tuner: str, config: dict, facts: dict, requests: int, state_dir: Path,
          traced: int | None = None) -> dict:
    """One job through a fresh dispatcher; memory is traced for request number ``traced`` only
    (tracing slows everything down), the others are timed."""
    store = SessionStore(state_dir)
    dispatcher = Dispatcher(load_config(overrides={"server": {"state_dir": str(state_dir)}}), store)
    client = SimulatedClient(seed=0)
    job, credential = f"limits-{name}", None
    hello = messages.Hello(tuner, config, initial_lr=0.1, max_steps=facts.get("max_steps"),
                           has_val_fn=facts.get("has_val_fn", False),
                           has_probe_fn=facts.get("has_probe_fn", False)).to_body()
    times, peaks, replies = [], [], []
    kind, body = "hello", hello
    for seq in range(requests):
        frame = protocol.dumps(protocol.request(kind, body, job_id=job, client_id="bench", seq=seq,
                                                credential=credential))
        if seq == traced:
            tracemalloc.start()
        started = time.perf_counter()
        raw = dispatcher.handle(frame)
        times.append(time.perf_counter() - started)
        if seq == traced:
            peaks.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
        replies.append(len(raw))
        reply = protocol.loads(raw)
        if reply["status"] != "ok":
            raise RuntimeError(f"{name}: {reply['error']}")
        credential = credential or reply["body"].get("credential")
        observation = client.execute(reply["body"]["plan"])
        if observation is None:  # the tuner said stop
            break
        kind, body = "report", messages.Report(observation).to_body()
    # And a report that jumps far ahead (a client that trained long without the server).
    if kind == "report" and tuner in ("cosine", "step"):
        body = messages.Report(Observation(step=MAX_STEPS - 3, steps=1, losses=[1.0])).to_body()
        frame = protocol.dumps(protocol.request("report", body, job_id=job, client_id="bench", seq=seq + 1,
                                                credential=credential))
        started = time.perf_counter()
        assert protocol.loads(dispatcher.handle(frame))["status"] == "ok"
        times.append(time.perf_counter() - started)
    state_bytes = (state_dir / "jobs" / job / "state.json").stat().st_size
    store.close()
    slowest = max(range(len(times)), key=times.__getitem__)
    return {"tuner": tuner, "config": config, "requests": len(times), "max_ms": 1000 * times[slowest],
            "slowest_request": slowest, "mean_ms": 1000 * sum(times) / len(times),
            "alloc_mb": max(peaks, default=0) / 2**20, "max_reply_kb": max(replies) / 1024,
            "state_kb": state_bytes / 1024}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench/out/request_limits.json")
    p.add_argument("--only", default="", help="comma-separated case names (default: all)")
    args = p.parse_args()
    names = [n for n in CASES if not args.only or n in args.only.split(",")]
    results = {}
    for name in names:  # import each tuner's module first, as a standalone server does before its ready line
        TUNERS[CASES[name][0]]
    with tempfile.TemporaryDirectory(prefix="autolrs-limits-") as tmp:
        for name in names:
            timed = drive(name, *CASES[name], Path(tmp) / f"{name}-timed")
            # The same job again (everything is seeded), tracing the memory of its slowest request.
            traced = drive(name, *CASES[name], Path(tmp) / f"{name}-traced", traced=timed["slowest_request"])
            results[name] = {**timed, "alloc_mb": traced["alloc_mb"]}
    print(f"{'job':<11} {'requests':>8} {'max ms':>8} {'mean ms':>8} {'alloc MB':>9} {'reply kB':>9} {'state kB':>9}"
          "   (alloc: the slowest request's peak)")
    for name, r in results.items():
        print(f"{name:<11} {r['requests']:>8} {r['max_ms']:>8.1f} {r['mean_ms']:>8.1f} {r['alloc_mb']:>9.2f} "
              f"{r['max_reply_kb']:>9.1f} {r['state_kb']:>9.1f}")
    write_report(args.out, {"cpu_count": os.cpu_count(), "load_avg": os.getloadavg(), "results": results})


if __name__ == "__main__":
    main()
