"""Start-up cost of the embedded server (``server="auto"``), not collected by pytest.

    python bench/embedded_start.py [--starts 10] [--out bench/out/embedded_start.json]

Each start is what a callback without a server does before its first step: start ``python -m
autolrs.server`` in a child process on a job folder, wait for its ready line, then send the
job's hello and get the plan back. Reported per start: ``ready`` (process start to ready line:
the server's own start-up), ``callback_built`` (``AutoLRS(model, optimizer, tuner=...)`` with
nothing running: the server started and the job's hello answered, what a trainer waits before
its first step) and ``callback_closed`` (goodbye, server stopped, job folder removed).
Medians over ``--starts`` runs, with the machine's load average, since on a shared machine the
figures grow with it. An ``autolrs`` job's first hello also imports scikit-learn on the server
(``--tuner autolrs`` measures that).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

from autolrs.callbacks import AutoLRS
from autolrs.callbacks.embedded import EmbeddedServer
from benchlib import write_report


def one_start(root: str, tuner: str, config: dict, i: int) -> dict:
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    embedded = EmbeddedServer(root)
    t0 = time.perf_counter()
    embedded.start(f"bench-{i}")
    ready = time.perf_counter() - t0
    embedded.stop()  # free the folder for the callback's own server below, keep nothing
    t1 = time.perf_counter()
    cb = AutoLRS(model, optimizer, tuner=tuner, config=config, job=f"bench-cb-{i}", max_steps=1000)
    built = time.perf_counter() - t1
    t2 = time.perf_counter()
    cb.close()
    closed = time.perf_counter() - t2
    return {"ready": ready, "callback_built": built, "callback_closed": closed}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--starts", type=int, default=10)
    p.add_argument("--tuner", default="cosine")
    p.add_argument("--out", default="bench/out/embedded_start.json")
    args = p.parse_args()
    config = {"T_0": 100} if args.tuner == "cosine" else {}
    with tempfile.TemporaryDirectory(prefix="autolrs-bench-cache-") as root:
        os.environ["AUTOLRS_CACHE_DIR"] = root
        os.environ.pop("AUTOLRS_SERVER", None)
        load_before = os.getloadavg()
        runs = [one_start(root, args.tuner, config, i) for i in range(args.starts)]
        load_after = os.getloadavg()
    medians = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    print(f"embedded server, {args.starts} starts, tuner {args.tuner}, load average {load_before[0]:.1f} -> "
          f"{load_after[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'':24}{'median':>9}{'min':>9}{'max':>9}")
    for key in runs[0]:
        values = [r[key] for r in runs]
        print(f"{key:24}{medians[key]:9.3f}{min(values):9.3f}{max(values):9.3f}  s")
    write_report(args.out, {"starts": args.starts, "tuner": args.tuner, "cpus": os.cpu_count(),
                            "load_average": [load_before[0], load_after[0]], "median_s": medians, "runs": runs})


if __name__ == "__main__":
    main()
