"""`bash run.sh` as a user runs it, against the fixed LRs and the schedule a practitioner would
start with, through the same example at the same budget.

    python bench/run_sh.py                 # seeds 0 and 1, the example's default budget
    python bench/run_sh.py --seeds 0 --max-steps 300

Rows: ``run.sh`` (the launcher with its defaults: the ``auto`` tuner), ``none@LR`` (the example
with ``--tuner none --lr LR``, no server) for LR in 0.01, 0.03, 0.05, 0.1, 0.3, and
``cosine@0.1`` (``--tuner cosine --lr 0.1``, annealed to 0 over the budget). Every run is its own
process, one at a time by default (each uses both cores' worth of threads otherwise fighting).
Prints a table (test accuracy per seed and the median) and writes JSON
(default bench/out/run_sh.json).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import write_report

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path("/work/shared/data/cifar-10-subset-py")
FIXED_LRS = (0.01, 0.03, 0.05, 0.1, 0.3)


def data_dir() -> str:
    if os.environ.get("CIFAR10_DIR"):
        return os.environ["CIFAR10_DIR"]
    return str(SHARED_DATA) if SHARED_DATA.is_dir() else str(ROOT / "data")


def example_steps() -> int:
    """The example's default budget in steps: 30 epochs of its training split (batch 128)."""
    sys.path.insert(0, str(ROOT / "examples"))
    from cifar_data import load_cifar10

    train_x = load_cifar10(Path(data_dir()), download=False)[0]
    n_train = len(train_x) - max(1, int(len(train_x) * 0.1))
    return math.ceil(30 * math.ceil(n_train / 128))


def run(row: str, seed: int, steps: int, work: Path, endpoint: str) -> dict:
    out = work / f"{row.replace('@', '_')}-s{seed}"
    common = ["--seed", str(seed), "--max-steps", str(steps), "--no-progress", "--device", "cpu"]
    env = {**os.environ, "CIFAR10_DIR": data_dir(), "AUTOLRS_OUT": str(out), "PYTHONUNBUFFERED": "1"}
    if row == "run.sh":
        cmd = ["bash", str(ROOT / "run.sh"), *common]
    else:
        tuner, lr = row.split("@")
        cmd = [sys.executable, str(ROOT / "examples" / "cifar10.py"), "--tuner", tuner, "--lr", lr, "--out", str(out),
               "--data-dir", data_dir(), *common]
        if tuner == "cosine":
            cmd += ["--tuner-config", json.dumps({"T_0": steps}), "--server", endpoint]
    started = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{row} seed {seed} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    return {"row": row, "seed": seed, "test_accuracy": summary["test_accuracy"], "steps": summary["steps"],
            "tuner": summary["tuner"], "wall_s": round(time.time() - started, 1),
            "account": proc.stdout.strip().splitlines()[-8:]}


def reused(path: str, steps: int, seeds: list[int]) -> list[dict]:
    """The baseline rows of an earlier report run at ``steps`` for one of ``seeds``."""
    report = json.loads(Path(path).read_text())
    if report["steps"] != steps:
        raise SystemExit(f"{path} was run at {report['steps']} steps, not {steps}")
    return [r for r in report["runs"] if r["row"] != "run.sh" and r["seed"] in seeds]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--max-steps", type=int, default=None, help="default: the example's 30 epochs")
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "run_sh.json"))
    p.add_argument("--reuse", default=None, metavar="JSON",
                   help="take the rows without a tuner decision (cosine@0.1, none@LR) from this earlier report "
                        "where its steps and seeds match; run only run.sh and what is missing")
    args = p.parse_args(argv)
    steps = args.max_steps or example_steps()
    rows = ["run.sh", "cosine@0.1"] + [f"none@{lr:g}" for lr in FIXED_LRS]
    results = reused(args.reuse, steps, args.seeds) if args.reuse else []
    from autolrs.server import ServerProcess

    with tempfile.TemporaryDirectory(prefix="autolrs-run-sh-") as tmp, ServerProcess(Path(tmp) / "state", lifeline=True) as server:
        for seed in args.seeds:
            for row in rows:
                if any(r["row"] == row and r["seed"] == seed for r in results):
                    continue
                r = run(row, seed, steps, Path(tmp), server.endpoint)
                results.append(r)
                print(f"  {row:<12} seed {seed}  test accuracy {r['test_accuracy']:.4f}  ({r['wall_s']:.0f}s)", flush=True)
    medians = {row: statistics.median(r["test_accuracy"] for r in results if r["row"] == row) for row in rows}
    best_fixed = max((row for row in rows if row.startswith("none@")), key=medians.get)
    print(f"\nCIFAR-10 subset, the example's small CNN, {steps} steps, seeds {args.seeds} (median test accuracy)")
    for row in rows:
        print(f"  {row:<12} {medians[row]:.4f}" + ("  <- best fixed LR" if row == best_fixed else ""))
    verdict = {"run_sh_vs_best_fixed": medians["run.sh"] - medians[best_fixed],
               "run_sh_vs_cosine_0.1": medians["run.sh"] - medians["cosine@0.1"]}
    print(f"run.sh - best fixed LR: {100 * verdict['run_sh_vs_best_fixed']:+.2f} points; "
          f"run.sh - cosine@0.1: {100 * verdict['run_sh_vs_cosine_0.1']:+.2f} points")
    report = {"benchmark": "run_sh", "steps": steps, "seeds": args.seeds, "medians": medians,
              "best_fixed": best_fixed, "verdict": verdict, "runs": results}
    write_report(args.out, report)
    return report


if __name__ == "__main__":
    main()
