"""The divergence guard on the quality suite's tasks: recovery from a 10x too large LR and from an
injected spike, and its cost on a healthy run.

    python bench/guard.py                       # every task, 2 seeds, short budgets (~40 min on 2 busy cores)
    python bench/guard.py --quick               # 3 tasks, 1 seed (~8 min)
    python bench/guard.py --tasks digits_mlp --seeds 0 1 2 --parts recovery

Three parts, each through a real server (one ``autolrs-server`` process) and the real callback,
at the practitioner's optimizer (SGD momentum 0.9, Adam or AdamW; see ``bench/tasks.py``):

* ``recovery``: ``constant``, ``cosine`` (to 0 over the budget) and ``hd`` from an initial LR
  10x the practitioner's (1.0 for SGD with momentum, 1e-2 for Adam/AdamW; ``hd`` not on AdamW,
  which it does not model), with the guard and
  without it (``guard: false``), against the grid best of ``bench/quality.py`` (constant,
  cosine and step schedules at the task's 5 grid LRs, trained in process, same seeds and
  steps). Target: where a method collapses without the guard (``tasks.collapsed``), it ends
  within 2 points of the grid best with it (accuracy points; for a loss metric, 2 % of it).
* ``spike``: ``cosine`` from the practitioner's LR with the guard, with and without the LR
  multiplied by 100 for 5 steps at 60 % of the budget (the injection multiplies each param
  group's LR around ``optimizer.step()``; the callback does not know); and the spike without
  the guard. Target: the final metric within 0.5 point of the run without the spike.
* ``cost``: a healthy ``cosine`` run at the practitioner's LR with the guard on and off,
  alternated, several pairs, no evaluations; the ratio of the median times per step (the guard
  adds one report and one checkpoint copy per ``guard_every`` steps), and the bytes of one
  model+optimizer copy (the memory the guard holds), for each task.

Prints a table per part and writes JSON under bench/out/. Every worker runs torch with one thread.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import tempfile
import time
import uuid
import warnings
from pathlib import Path

import torch

import quality
from autolrs.tuners.guard_knobs import default_every
from benchlib import write_report
from tasks import TASKS, Batches, Task

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"

RECOVERY_METHODS = ("constant", "cosine", "hd")
HIGH = 10.0  # the initial LR as a multiple of the practitioner's
SPIKE_FACTOR, SPIKE_STEPS, SPIKE_AT = 100.0, 5, 0.6
QUICK_TASKS = ("digits_mlp", "digits_cnn", "diabetes_mse")
COST_PAIRS = 3
COST_BLOCK = 25


def tuner_config(method: str, steps: int, guard: bool, guard_every: int | None) -> tuple[str, dict]:
    config: dict = {"guard": guard}
    if guard and guard_every is not None:
        config["guard_every"] = guard_every
    if method == "cosine":
        config.update(T_0=steps)  # one annealing to 0 over the budget, like the grid's cosine
    return method, config


def train(task: Task, seed: int, steps: int, lr: float, tuner: str, config: dict, endpoint: str,
          state_dir: str, spike: tuple[int, int] | None = None, record: bool = True) -> dict:
    """One run through the server. ``spike``: ``(first step, steps)`` with the LR x SPIKE_FACTOR."""
    from autolrs.callbacks import AutoLRS

    model = task.model(seed)
    optimizer = task.make_optimizer(model, lr)
    recorder = quality.Recorder(task, model, steps) if record else None
    job = f"g-{task.name}-{tuner}-{seed}-{uuid.uuid4().hex[:8]}"
    step, started = 0, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with AutoLRS(model, optimizer, tuner=tuner, config=config, server=endpoint, job=job, max_steps=steps,
                     seed=seed, timeout=30.0) as cb:
            for xb, yb in Batches(task, seed):
                if step >= steps or cb.should_stop:
                    break
                spiking = spike is not None and spike[0] <= step < spike[0] + spike[1]
                saved = [g["lr"] for g in optimizer.param_groups]
                if spiking:
                    for g in optimizer.param_groups:
                        g["lr"] = g["lr"] * SPIKE_FACTOR
                optimizer.zero_grad(set_to_none=True)
                loss = task.criterion(model(xb), yb)
                loss.backward()
                optimizer.step()
                if spiking:
                    for g, value in zip(optimizer.param_groups, saved):
                        g["lr"] = value
                step += 1
                cb.step(loss)
                if started is None:  # time the steps, not the hello before them
                    started = time.perf_counter()
                if recorder is not None:
                    recorder.after_step(step)
            wall = time.perf_counter() - started if started is not None else 0.0
            final_lr = cb.lr
    summary = _last_summary(state_dir, job)
    guard = summary.get("guard") or {}
    info = {"steps_run": step, "wall_s": wall, "s_per_step": wall / max(1, step - 1), "final_lr": final_lr,
            "rollbacks": guard.get("rollbacks", 0), "steps_rolled_back": guard.get("steps_rolled_back", 0),
            "guard_stopped": guard.get("stopped"), "lr_scale": guard.get("lr_scale", 1.0),
            "events": [{k: e.get(k) for k in ("step", "action", "to_step", "lr_before", "lr_after", "reason")}
                       for e in guard.get("events", [])]}
    if recorder is None:
        return info
    return quality._finish(task, model, recorder, info)


def _last_summary(state_dir: str, job: str) -> dict:
    path = Path(state_dir) / "jobs" / job / "decisions.jsonl"
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    for line in reversed(lines):
        summary = json.loads(line).get("summary")
        if summary:
            return summary
    return {}


def copy_bytes(task: Task, lr: float) -> int:
    """Bytes of one copy of model and optimizer state after a step (what a checkpoint holds)."""
    model = task.model(0)
    optimizer = task.make_optimizer(model, lr)
    xb, yb = next(iter(Batches(task, 0)))
    task.criterion(model(xb), yb).backward()
    optimizer.step()
    tensors = list(model.state_dict().values())
    for state in optimizer.state_dict()["state"].values():
        tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors)


# ------------------------------------------------------------------------------ the matrix


def plan(args) -> list[dict]:
    runs = []
    for name in args.tasks:
        task = TASKS[name]
        steps = task.steps(args.budget)
        for seed in args.seeds:
            if "recovery" in args.parts:
                for sched in quality.SCHEDULES:
                    for lr in task.grid:
                        runs.append({"part": "grid", "task": name, "seed": seed, "steps": steps, "method": sched,
                                     "lr": lr})
                for method in RECOVERY_METHODS:
                    if method == "hd" and task.optimizer == "adamw":
                        continue  # hd models SGD and Adam only
                    for guard in (True, False):
                        runs.append({"part": "recovery", "task": name, "seed": seed, "steps": steps,
                                     "method": method, "guard": guard, "lr": task.default_lr * HIGH})
            if "spike" in args.parts:
                for guard, spike in ((True, False), (True, True), (False, True)):
                    runs.append({"part": "spike", "task": name, "seed": seed, "steps": steps, "method": "cosine",
                                 "guard": guard, "spike": spike, "lr": task.default_lr})
    return sorted(runs, key=lambda r: -r["steps"] * quality._cost(TASKS[r["task"]]))


_WORKER: dict = {}


def _init(endpoint: str, state_dir: str, guard_every: int | None) -> None:
    torch.set_num_threads(1)
    _WORKER.update(endpoint=endpoint, state_dir=state_dir, guard_every=guard_every)


def _execute(run: dict) -> dict:
    task = TASKS[run["task"]]
    started = time.time()
    try:
        if run["part"] == "grid":
            row = quality.run_baseline(task, run["seed"], run["steps"], run["method"], run["lr"])
        else:
            tuner, config = tuner_config(run["method"], run["steps"], run["guard"], _WORKER["guard_every"])
            spike = (round(SPIKE_AT * run["steps"]), SPIKE_STEPS) if run.get("spike") else None
            row = train(task, run["seed"], run["steps"], run["lr"], tuner, config, _WORKER["endpoint"],
                        _WORKER["state_dir"], spike=spike)
    except Exception as exc:  # noqa: BLE001 - one failed run is reported, the rest goes on
        row = {"metric": None, "error": f"{type(exc).__name__}: {exc}", "collapsed": True, "curve": []}
    row.pop("curve", None)
    return {**run, **row, "wall_s": round(time.time() - started, 2)}


def run_matrix(runs: list[dict], jobs: int, work: Path, guard_every: int | None) -> list[dict]:
    from autolrs.server.process import ServerProcess

    rows, started = [], time.time()
    with ServerProcess(work / "state", log_path=work / "server.log", lifeline=True) as server:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(jobs, initializer=_init, initargs=(server.endpoint, str(work / "state"), guard_every)) as pool:
            for i, row in enumerate(pool.imap_unordered(_execute, runs), 1):
                rows.append(row)
                if i % 10 == 0 or i == len(runs):
                    print(f"  {i}/{len(runs)} runs ({time.time() - started:.0f}s)", flush=True)
    return rows


def measure_cost(tasks: list[str], budget: str, work: Path, guard_every: int | None, pairs: int,
                 block: int = COST_BLOCK) -> list[dict]:
    """Two jobs of the same healthy run (cosine at the practitioner's LR), one guarded and one
    not, trained side by side in this process (one thread) in alternating blocks of ``block``
    steps, so that machine noise hits both alike; ``pairs`` such job pairs per task. The ratio
    is of the median block times."""
    from autolrs.callbacks import AutoLRS
    from autolrs.server.process import ServerProcess

    torch.set_num_threads(1)
    out = []
    with ServerProcess(work / "cost-state", log_path=work / "cost-server.log", lifeline=True) as server:
        for name in tasks:
            task = TASKS[name]
            steps = task.steps(budget)
            times: dict[bool, list[float]] = {True: [], False: []}
            reports = {True: 0, False: 0}
            for pair in range(pairs + 1):  # the first pair warms up and is not counted
                runs = {}
                for guard in (False, True):
                    model = task.model(pair)
                    optimizer = task.make_optimizer(model, task.default_lr)
                    tuner, config = tuner_config("cosine", steps, guard, guard_every)
                    cb = AutoLRS(model, optimizer, tuner=tuner, config=config, server=server.endpoint,
                                 job=f"cost-{name}-{guard}-{pair}-{uuid.uuid4().hex[:6]}", max_steps=steps, timeout=30.0)
                    runs[guard] = (model, optimizer, cb, iter(Batches(task, pair)))
                try:
                    for i in range(steps // block):
                        for guard in ((False, True) if i % 2 == 0 else (True, False)):
                            model, optimizer, cb, batches = runs[guard]
                            started = time.perf_counter()
                            for _ in range(block):
                                xb, yb = next(batches)
                                optimizer.zero_grad(set_to_none=True)
                                loss = task.criterion(model(xb), yb)
                                loss.backward()
                                optimizer.step()
                                cb.step(loss)
                            if pair:
                                times[guard].append(time.perf_counter() - started)
                finally:
                    for guard, (_, _, cb, _) in runs.items():
                        if pair:
                            reports[guard] += cb.reports
                        cb.close()
            on, off = statistics.median(times[True]), statistics.median(times[False])
            nbytes = copy_bytes(task, task.default_lr)
            out.append({"task": name, "steps": steps, "pairs": pairs, "block": block, "blocks": len(times[True]),
                        "guard_every": guard_every or default_every(steps),
                        "ms_per_step_off": 1e3 * off / block, "ms_per_step_on": 1e3 * on / block, "ratio": on / off,
                        "reports_per_1000_steps_off": 1000 * reports[False] / (pairs * steps),
                        "reports_per_1000_steps_on": 1000 * reports[True] / (pairs * steps),
                        "copy_bytes": nbytes})
            print(f"  cost {name}: {1e3 * off / block:.3f} -> {1e3 * on / block:.3f} ms/step (x{on / off:.3f}), "
                  f"copy {nbytes / 1024:.1f} KiB", flush=True)
    return out


# ------------------------------------------------------------------------------ analysis


# A row's final metric (a failed run: the worst value) and the gap to a reference, as the
# quality suite reports them.
_value = quality._metric_value
_gap = quality._gap


def analyse(rows: list[dict]) -> dict:
    out: dict = {}
    for name in dict.fromkeys(r["task"] for r in rows):
        task = TASKS[name]
        mine = [r for r in rows if r["task"] == name]
        better = max if task.higher_is_better else min
        entry: dict = {"higher_is_better": task.higher_is_better, "steps": mine[0]["steps"]}
        grid: dict[str, list[float]] = {}
        for r in mine:
            if r["part"] == "grid":
                grid.setdefault(f"{r['method']}@{r['lr']:g}", []).append(_value(task, r))
        if grid:
            medians = {k: statistics.median(v) for k, v in grid.items()}
            best = better(medians, key=medians.get)
            entry.update(grid_best=best, grid_best_median=medians[best])
        rec = {}
        for method in RECOVERY_METHODS:
            for guard in (True, False):
                group = [r for r in mine if r["part"] == "recovery" and r["method"] == method and r["guard"] == guard]
                if not group:
                    continue
                values = [_value(task, r) for r in group]
                rec[f"{method}{'+guard' if guard else ''}"] = {
                    "median": statistics.median(values), "values": values,
                    "collapses": sum(bool(r.get("collapsed")) for r in group), "n": len(group),
                    "rollbacks": [r.get("rollbacks") for r in group],
                    "final_lr": [r.get("final_lr") for r in group],
                    "gap_to_grid_best": _gap(task, statistics.median(values), entry["grid_best_median"])
                    if "grid_best_median" in entry else None,
                    "errors": [r["error"] for r in group if r.get("error")]}
        for method in RECOVERY_METHODS:
            on, off = rec.get(f"{method}+guard"), rec.get(method)
            if on and off:
                on["needed"] = off["collapses"] > 0  # the target applies where it collapses without
                on["met"] = on["gap_to_grid_best"] is not None and on["gap_to_grid_best"] <= 2.0 if on["needed"] else None
        entry["recovery"] = rec
        spikes = {}
        for label, guard, spike in (("clean+guard", True, False), ("spike+guard", True, True), ("spike", False, True)):
            group = [r for r in mine if r["part"] == "spike" and r["guard"] == guard and bool(r["spike"]) == spike]
            if group:
                spikes[label] = {"values": [_value(task, r) for r in group], "rollbacks": [r.get("rollbacks") for r in group],
                                 "steps_rolled_back": [r.get("steps_rolled_back") for r in group],
                                 "errors": [r["error"] for r in group if r.get("error")]}
        if "clean+guard" in spikes and "spike+guard" in spikes:
            # Per seed: the spiked run against the same seed's clean run.
            gaps = [_gap(task, s, c) for s, c in zip(spikes["spike+guard"]["values"], spikes["clean+guard"]["values"])]
            spikes["gaps"] = gaps
            spikes["met"] = all(g <= 0.5 for g in gaps)
        entry["spike"] = spikes
        out[name] = entry
    return out


def _fmt(x, spec=".4f") -> str:
    return "-" if x is None else format(x, spec)


def print_tables(analysis: dict, cost: list[dict]) -> None:
    print("\nRecovery from a 10x too large initial LR (median over seeds; gap to the grid best: points, or % for a loss)")
    print(f"  {'task':<18}{'method':<16}{'median':>9}{'gap':>8}{'collapses':>11}{'rollbacks':>12}  target")
    for name, entry in analysis.items():
        if "grid_best" in entry:
            print(f"  {name:<18}{'grid ' + entry['grid_best']:<16}{_fmt(entry['grid_best_median']):>9}")
        for label, s in entry["recovery"].items():
            target = "" if "needed" not in s else ("n/a (no collapse without)" if not s["needed"]
                                                   else ("met" if s["met"] else "MISSED"))
            print(f"  {'':<18}{label:<16}{_fmt(s['median']):>9}{_fmt(s['gap_to_grid_best'], '+.2f'):>8}"
                  f"{s['collapses']:>7}/{s['n']:<3}{str(s['rollbacks']):>12}  {target}")
    print("\nInjected spike (LR x100 for 5 steps at 60% of the budget), cosine from the practitioner's LR")
    print(f"  {'task':<18}{'clean+guard':>14}{'spike+guard':>14}{'spike, no guard':>17}{'gap':>8}  rollbacks  target")
    for name, entry in analysis.items():
        s = entry["spike"]
        if not s:
            continue
        med = {k: statistics.median(v["values"]) for k, v in s.items() if isinstance(v, dict)}
        gaps = s.get("gaps")
        print(f"  {name:<18}{_fmt(med.get('clean+guard')):>14}{_fmt(med.get('spike+guard')):>14}"
              f"{_fmt(med.get('spike')):>17}{_fmt(max(gaps) if gaps else None, '+.2f'):>8}  "
              f"{str(s.get('spike+guard', {}).get('rollbacks')):>9}  {'met' if s.get('met') else 'MISSED'}")
    if cost:
        print("\nCost on a healthy run (cosine at the practitioner's LR, guard on vs off alternated, medians)")
        print(f"  {'task':<18}{'every':>6}{'reports/1k':>11}{'ms/step off':>12}{'ms/step on':>12}{'ratio':>8}"
              f"{'copy KiB':>10}")
        for c in cost:
            print(f"  {c['task']:<18}{c['guard_every']:>6}{c['reports_per_1000_steps_on']:>11.0f}"
                  f"{c['ms_per_step_off']:>12.3f}{c['ms_per_step_on']:>12.3f}{c['ratio']:>8.3f}"
                  f"{c['copy_bytes'] / 1024:>10.1f}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--budget", default="short", choices=("short", "long"))
    p.add_argument("--parts", nargs="+", default=["recovery", "spike", "cost"], choices=("recovery", "spike", "cost"))
    p.add_argument("--guard-every", type=int, default=None, help="override the guard's default segment length")
    p.add_argument("--pairs", type=int, default=COST_PAIRS, help="guard on/off pairs per task for the cost")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--quick", action="store_true", help=f"tasks {', '.join(QUICK_TASKS)}, seed 0, 2 cost pairs")
    p.add_argument("--out", default=str(OUT / "guard.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.tasks, args.seeds, args.pairs = list(QUICK_TASKS), [0], 1
    if "cifar_cnn" in args.tasks:
        try:
            TASKS["cifar_cnn"].data()
        except FileNotFoundError as exc:
            print(f"skipping cifar_cnn: {exc}")
            args.tasks.remove("cifar_cnn")
    started = time.time()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="autolrs-guard-bench-") as tmp:
        work = Path(tmp)
        rows = []
        runs = plan(args)
        if runs:
            print(f"{len(runs)} runs on {args.jobs} workers")
            rows = run_matrix(runs, args.jobs, work, args.guard_every)
        cost = measure_cost(args.tasks, args.budget, work, args.guard_every, args.pairs) if "cost" in args.parts else []
    analysis = analyse(rows) if rows else {}
    print_tables(analysis, cost)
    write_report(args.out, {
        "benchmark": "guard", "config": vars(args),
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "cpus": os.cpu_count(), "load_average_start": load, "load_average_end": os.getloadavg()[0]},
        "analysis": analysis, "cost": cost, "rows": rows, "wall_time_s": time.time() - started})


if __name__ == "__main__":
    main()
