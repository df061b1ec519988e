"""AutoLRS against grid-searched LR schedules on CIFAR-10 (small_cnn, SGD momentum 0.9, weight
decay 5e-4), all with the same optimizer-step budget.

Rows:

* ``autolrs``: the AutoLRS tuner with the LR range [1e-3, 1] and nothing else tuned;
  ``autolrs+keep_best``: the same with ``keep_best_trial: true``;
  ``autolrs+keep_best+cosine``: and ``final_decay: cosine`` (the last stage anneals to 0);
  ``autolrs+auto``: no range at all, ``lr_min``/``lr_max`` ``auto`` (a 100-step range test sets it).
* Baselines, one per LR of a grid (default 0.003 0.01 0.03 0.1 0.3): ``constant`` (``--tuner none``),
  ``cosine`` (tuner ``cosine`` with ``T_0`` = budget, ``T_mult`` 1: decay to 0 over the budget) and
  ``step`` (tuner ``step``, x0.1 at half the budget).

Every run is ``examples/cifar10.py`` in its own subprocess (one torch thread each by default,
``--jobs`` of them at a time); every run that has a tuner talks to one real server
(``ServerProcess``) started for the whole benchmark. Each run evaluates the test set every
``--eval-every`` steps, so the table can say when AutoLRS first reaches the best baseline's final
test accuracy. For AutoLRS only evaluations on the training path count: a point inside a trial
(whose weights the search then throws away) is not "reached".

Prints a table and writes JSON (default bench/out/autolrs_cifar10.json): every run (final
accuracy and loss, test curve, wall time, for AutoLRS the server's stage records: LRs tried,
forecasts, winner, search vs. training steps), the configuration and the verdict against the
target (AutoLRS within 1 accuracy point of the best baseline's final accuracy, reaching that
accuracy in at most 0.8x the steps the best baseline needed).

    python bench/autolrs_cifar10.py                       # default: --max-steps 1500, ~15-20 min on 2 cores
    python bench/autolrs_cifar10.py --quick               # smoke test, about a minute
    python bench/autolrs_cifar10.py --max-steps 3000 --seeds 0 1 --lrs 0.01 0.03 0.1

The data comes from ``--data-dir``, else ``$CIFAR10_DIR``, else /work/shared/data/cifar-10-subset-py
when it exists, else ./data. One seed is noisy: on the 1,017-image test subset one image is about
0.1 accuracy points and seed-to-seed spread of a run is typically a point or more.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from autolrs.server import ServerProcess
from benchlib import write_report

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "cifar10.py"
SHARED_DATA = Path("/work/shared/data/cifar-10-subset-py")

AUTOLRS_RANGE = {"lr_min": 1e-3, "lr_max": 1.0}
TARGET_GAP = 0.01  # AutoLRS's final accuracy at most 1 point below the best baseline's
TARGET_RATIO = 0.8  # ... and the best baseline's final accuracy reached in <= 0.8x its steps
DEFAULT_LRS = [0.003, 0.01, 0.03, 0.1, 0.3]
BASELINES = ("constant", "cosine", "step")
AUTOLRS_ROWS = {
    "autolrs": {},
    "autolrs+keep_best": {"keep_best_trial": True},
    "autolrs+keep_best+cosine": {"keep_best_trial": True, "final_decay": "cosine"},
    "autolrs+auto": {"lr_min": "auto", "lr_max": "auto"},  # no range given: a range test sets it
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max-steps", type=int, default=None, help="optimizer steps per run (default 1500; quick: 60)")
    p.add_argument("--lrs", type=float, nargs="+", default=None, help=f"baseline LR grid (default {DEFAULT_LRS})")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (default: one, 0)")
    p.add_argument("--eval-every", type=int, default=None,
                   help="test-set evaluation period in steps (default 50; quick: 10)")
    p.add_argument("--baselines", nargs="*", choices=BASELINES, default=list(BASELINES),
                   help="baseline families to run (none: AutoLRS rows only)")
    p.add_argument("--autolrs-rows", nargs="*", choices=AUTOLRS_ROWS, default=list(AUTOLRS_ROWS),
                   help="which AutoLRS rows to run (none: baselines only)")
    p.add_argument("--baselines-from", default=None, metavar="JSON",
                   help="reuse the baseline rows of an earlier run of this benchmark (same steps, eval period, "
                        "batch size and seeds) instead of training them again: for iterating on the tuner")
    p.add_argument("--autolrs-config", default=None,
                   help="extra AutoLRS knobs as JSON, for experiments (default: none; the benchmark's "
                        "point is AutoLRS with only its range set)")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (default 2: one per core)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--work-dir", default=None,
                   help="folder for the runs' outputs and the server state (default: a temp folder, removed)")
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "autolrs_cifar10.json"))
    p.add_argument("--quick", action="store_true", help="tiny smoke configuration (about a minute)")
    args = p.parse_args(argv)
    if args.quick:
        args.max_steps = args.max_steps or 60
        args.lrs = args.lrs or [0.03, 0.3]
        args.eval_every = args.eval_every or 10
    args.max_steps = args.max_steps or 1500
    args.lrs = args.lrs or list(DEFAULT_LRS)
    args.eval_every = args.eval_every or 50
    if args.max_steps < 2:
        p.error("--max-steps must be >= 2")
    return args


def data_dir(cli_value: str | None) -> str:
    if cli_value:
        return cli_value
    if os.environ.get("CIFAR10_DIR"):
        return os.environ["CIFAR10_DIR"]
    return str(SHARED_DATA) if SHARED_DATA.is_dir() else "data"


def configurations(args: argparse.Namespace) -> list[dict]:
    """One dict per run: name, family, lr, seed, and the example's extra arguments."""
    n = args.max_steps
    runs = []
    extra = json.loads(args.autolrs_config) if args.autolrs_config else {}
    for seed in args.seeds:
        for name in args.autolrs_rows:
            cfg = {**AUTOLRS_RANGE, **AUTOLRS_ROWS[name], **extra}
            runs.append({"name": name, "family": "autolrs", "lr": None, "seed": seed, "tuner": "autolrs",
                         "tuner_config": cfg})
        if not args.baselines_from:
            for family in args.baselines:
                for lr in args.lrs:
                    if family == "constant":
                        tuner, cfg = "none", None
                    elif family == "cosine":
                        tuner, cfg = "cosine", {"T_0": n, "T_mult": 1, "eta_min": 0.0}
                    else:
                        tuner, cfg = "step", {"step_size": max(1, n // 2), "gamma": 0.1}
                    runs.append({"name": f"{family} lr={lr:g}", "family": family, "lr": lr, "seed": seed,
                                 "tuner": tuner, "tuner_config": cfg})
    return runs


def reused_baselines(args: argparse.Namespace) -> list[dict]:
    if not args.baselines_from:
        return []
    old = json.loads(Path(args.baselines_from).read_text())
    cfg = old["config"]
    for key in ("max_steps", "eval_every", "batch_size"):
        if cfg[key] != getattr(args, key):
            raise SystemExit(f"--baselines-from: {key} was {cfg[key]}, this run has {getattr(args, key)}")
    rows = [dict(r, reused_from=str(args.baselines_from)) for r in old["rows"]
            if r["family"] != "autolrs" and r["seed"] in args.seeds and r["family"] in args.baselines
            and r["lr"] in args.lrs]
    missing = {(f, lr, sd) for f in args.baselines for lr in args.lrs for sd in args.seeds} - {
        (r["family"], r["lr"], r["seed"]) for r in rows}
    if missing:
        raise SystemExit(f"--baselines-from: {args.baselines_from} lacks {sorted(missing)}")
    return rows


def run_one(run: dict, args: argparse.Namespace, endpoint: str, work: Path) -> dict:
    tag = f"{run['name']}-s{run['seed']}".replace(" ", "_").replace("=", "").replace("+", "_")
    out = work / "runs" / tag
    job = f"bench-{tag}-{uuid.uuid4().hex[:6]}"
    argv = [sys.executable, str(EXAMPLE), "--tuner", run["tuner"], "--model", "small_cnn", "--device", "cpu",
            "--max-steps", str(args.max_steps), "--batch-size", str(args.batch_size),
            "--momentum", "0.9", "--weight-decay", "5e-4", "--seed", str(run["seed"]),
            "--data-dir", args.data_dir, "--out", str(out), "--server", endpoint, "--job", job,
            "--eval-every", str(args.eval_every), "--no-progress"]
    if run["lr"] is not None:
        argv += ["--lr", repr(run["lr"])]
    if run["tuner_config"] is not None:
        argv += ["--tuner-config", json.dumps(run["tuner_config"])]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "PYTHONUNBUFFERED": "1"}
    started = time.time()
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.time() - started
    (out / "stdout.txt").parent.mkdir(parents=True, exist_ok=True)
    (out / "stdout.txt").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"run {run['name']} (seed {run['seed']}) failed with {proc.returncode}:\n"
                           f"{proc.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    row = {**run, "job": job, "final_test_accuracy": summary["test_accuracy"],
           "final_test_loss": summary["test_loss"], "steps": summary["steps"],
           "train_wall_s": summary["wall_time_s"], "process_wall_s": round(wall, 2),
           "test_curve": summary["test_curve"], "final_train_loss": _tail_mean(summary["losses"], 50)}
    if run["family"] == "autolrs":
        row["tuner_summary"] = summary.get("tuner_summary")
        row["winners"] = (summary.get("tuner_summary") or {}).get("winners", [])
        row["discarded"] = summary.get("discarded", [])
        row["lr_segments"] = segments(summary["lrs"])
        s = summary.get("tuner_summary") or {}
        row["search_steps"], row["train_steps"] = s.get("search_steps"), s.get("train_steps")
    return row


def _tail_mean(values: list[float], n: int) -> float | None:
    tail = [v for v in values[-n:] if v == v]
    return sum(tail) / len(tail) if tail else None


def segments(lrs: list[float]) -> list[list]:
    """The per-step LRs as [first_step, last_step, lr] runs (steps counted from 1)."""
    out: list[list] = []
    for i, lr in enumerate(lrs, start=1):
        if out and out[-1][2] == lr:
            out[-1][1] = i
        else:
            out.append([i, i, lr])
    return out


def on_path_curve(row: dict) -> list[list[float]]:
    """The test curve without the evaluations a restore threw away (inside the callback's
    ``discarded`` windows: trials, the range test)."""
    windows = row.get("discarded") or []
    return [pt for pt in row["test_curve"] if not any(a < pt[0] < b for a, b in windows)]


def first_reach(curve: list[list[float]], threshold: float) -> int | None:
    for step, acc, _loss in curve:
        if acc >= threshold - 1e-12:
            return int(step)
    return None


def mean(xs):
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def analyse(rows: list[dict], args: argparse.Namespace) -> dict:
    """Per-configuration means over seeds, the best baseline, and AutoLRS's verdicts."""
    by_name: dict[str, list[dict]] = {}
    for r in rows:
        by_name.setdefault(r["name"], []).append(r)
    configs = {}
    for name, rs in by_name.items():
        accs = [r["final_test_accuracy"] for r in rs]
        configs[name] = {"family": rs[0]["family"], "lr": rs[0]["lr"], "final_test_accuracy": mean(accs),
                         "final_test_accuracy_std": statistics.stdev(accs) if len(accs) > 1 else None,
                         "seeds": [r["seed"] for r in rs]}
    baselines = {n: c for n, c in configs.items() if c["family"] != "autolrs"}
    result: dict = {"configs": configs}
    if not baselines:
        return result
    best_name = max(baselines, key=lambda n: baselines[n]["final_test_accuracy"])
    best = baselines[best_name]
    target = best["final_test_accuracy"]
    # steps the best baseline itself needed to first reach its own final accuracy (per seed)
    best_reach = [first_reach(r["test_curve"], r["final_test_accuracy"]) for r in by_name[best_name]]
    best_steps = mean(best_reach)
    result["best_baseline"] = {"name": best_name, "final_test_accuracy": target,
                               "steps_to_own_final": best_steps, "budget": args.max_steps}
    result["per_family_best"] = {
        fam: max(((n, c) for n, c in baselines.items() if c["family"] == fam),
                 key=lambda nc: nc[1]["final_test_accuracy"])[0]
        for fam in {c["family"] for c in baselines.values()}}
    verdicts = {}
    for name, c in configs.items():
        if c["family"] != "autolrs":
            continue
        reach = [first_reach(on_path_curve(r), target) for r in by_name[name]]
        reach_within = [first_reach(on_path_curve(r), target - TARGET_GAP) for r in by_name[name]]
        reached = all(x is not None for x in reach)
        steps = mean(reach) if reached else None
        gap = target - c["final_test_accuracy"]
        ratio = steps / best_steps if steps is not None and best_steps else None
        ratio_budget = steps / args.max_steps if steps is not None else None
        verdicts[name] = {
            "final_test_accuracy": c["final_test_accuracy"], "gap_to_best_baseline": gap,
            "steps_to_best_baseline_final": steps, "reached_in_seeds": sum(x is not None for x in reach),
            "steps_to_within_1pt": mean(reach_within) if all(x is not None for x in reach_within) else None,
            "ratio_to_best_baseline_steps": ratio, "ratio_to_budget": ratio_budget,
            "meets_accuracy_target": gap <= TARGET_GAP,
            "meets_speed_target": ratio is not None and ratio <= TARGET_RATIO,
        }
    result["autolrs"] = verdicts
    return result


def fmt(x, spec=".4f", none="-"):
    return none if x is None else format(x, spec)


def print_table(rows: list[dict], analysis: dict, args: argparse.Namespace) -> None:
    configs = analysis["configs"]
    best = analysis.get("best_baseline")
    print(f"\nCIFAR-10 subset, small_cnn, SGD(momentum 0.9, wd 5e-4), batch {args.batch_size}, "
          f"{args.max_steps} steps, seeds {args.seeds}, test eval every {args.eval_every} steps")
    print(f"{'run':<22}{'final test acc':>16}{'final test loss':>17}{'steps to best-baseline acc':>28}")
    for name, c in configs.items():
        rs = [r for r in rows if r["name"] == name]
        loss = mean([r["final_test_loss"] for r in rs])
        reach = None
        if best is not None:
            reach_list = [first_reach(on_path_curve(r), best["final_test_accuracy"]) for r in rs]
            reach = mean(reach_list) if all(x is not None for x in reach_list) else None
        acc = fmt(c["final_test_accuracy"])
        if c["final_test_accuracy_std"] is not None:
            acc += f" ±{c['final_test_accuracy_std']:.3f}"
        mark = "  <- best baseline" if best and name == best["name"] else ""
        print(f"{name:<22}{acc:>16}{fmt(loss):>17}{fmt(reach, '.0f', 'not reached'):>28}{mark}")
    if best is None:
        return
    print(f"\nbest baseline: {best['name']}  final test accuracy {best['final_test_accuracy']:.4f}, "
          f"first reached at step {fmt(best['steps_to_own_final'], '.0f')} of {args.max_steps}")
    for name, v in analysis.get("autolrs", {}).items():
        print(f"{name}: final {v['final_test_accuracy']:.4f} (gap {100 * v['gap_to_best_baseline']:+.2f} pts, "
              f"target <= {100 * TARGET_GAP:.0f}: {'met' if v['meets_accuracy_target'] else 'MISSED'}); "
              f"steps to best-baseline acc {fmt(v['steps_to_best_baseline_final'], '.0f', 'never')}, "
              f"ratio {fmt(v['ratio_to_best_baseline_steps'], '.2f')} vs best baseline's steps "
              f"(target <= {TARGET_RATIO}: {'met' if v['meets_speed_target'] else 'MISSED'}), "
              f"{fmt(v['ratio_to_budget'], '.2f')} of the budget; "
              f"to within 1 pt: {fmt(v['steps_to_within_1pt'], '.0f', 'never')}")
    for r in rows:
        if r["family"] != "autolrs":
            continue
        print(f"\n{r['name']} (seed {r['seed']}): search {r.get('search_steps')} steps, "
              f"training {r.get('train_steps')} steps")
        for start, winner in r.get("winners") or []:
            print(f"  stage from step {start}: winner {winner:.4g}")
        last = (r.get("tuner_summary") or {}).get("last_stage")
        if last:
            tried = ", ".join(f"{t['lr']:.3g}:{t['forecast']:.3f}" for t in last["trials"])
            print(f"  last stage ({last['mode']}, {len(last['trials'])}x{last['trial_steps']} trial + "
                  f"{last['exploit_steps']} exploit): tried lr:forecast {tried}")


def main(argv=None) -> dict:
    args = parse_args(argv)
    args.data_dir = data_dir(args.data_dir)
    runs = configurations(args)
    started = time.time()
    tmp = None
    if args.work_dir:
        work = Path(args.work_dir)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="autolrs-bench-")
        work = Path(tmp.name)
    print(f"{len(runs)} runs of {args.max_steps} steps, {args.jobs} at a time, {args.threads} torch thread(s) "
          f"each; work dir {work}", flush=True)
    rows: list[dict] = []
    try:
        with ServerProcess(work / "state", log_path=work / "server.log", lifeline=True) as server:
            def task(run):
                row = run_one(run, args, server.endpoint, work)
                print(f"  done {row['name']:<22} seed {row['seed']}  test acc {row['final_test_accuracy']:.4f}  "
                      f"{row['process_wall_s']:.0f}s  (elapsed {time.time() - started:.0f}s)", flush=True)
                return row

            with ThreadPoolExecutor(max(1, args.jobs)) as pool:
                rows = list(pool.map(task, runs))
        rows += reused_baselines(args)
        analysis = analyse(rows, args)
        print_table(rows, analysis, args)
    finally:
        if tmp is not None:
            tmp.cleanup()
    wall = time.time() - started
    result = {
        "benchmark": "autolrs_cifar10",
        "config": {"max_steps": args.max_steps, "lrs": args.lrs, "seeds": args.seeds,
                   "eval_every": args.eval_every, "baselines": args.baselines,
                   "baselines_from": args.baselines_from, "autolrs_rows": args.autolrs_rows, "batch_size": args.batch_size,
                   "model": "small_cnn", "optimizer": "SGD momentum 0.9 weight_decay 5e-4",
                   "autolrs_range": AUTOLRS_RANGE, "autolrs_extra_config": args.autolrs_config,
                   "cosine": "T_0 = max_steps, T_mult 1, eta_min 0",
                   "step": "step_size = max_steps // 2, gamma 0.1", "jobs": args.jobs, "threads": args.threads,
                   "data_dir": args.data_dir, "quick": args.quick,
                   "target": {"max_accuracy_gap": TARGET_GAP, "max_steps_ratio": TARGET_RATIO}},
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "cpu_count": os.cpu_count(), "machine": platform.machine()},
        "analysis": analysis,
        "rows": rows,
        "wall_time_s": round(wall, 1),
    }
    print(f"\nwall time {wall:.0f}s")
    write_report(args.out, result)
    return result


if __name__ == "__main__":
    main()
