"""The tuning-quality suite: every tuner that decides an LR, on every task of ``bench/tasks.py``,
over seeds and two budgets, against a grid of fixed schedules at the same number of steps.

    python bench/quality.py                 # the whole suite (about 25 minutes on 2 cores)
    python bench/quality.py --quick         # 3 tasks, 2 seeds, short budget (under 5 minutes)
    python bench/quality.py --tasks digits_mlp --methods autolrs --budgets long --seeds 0 1 2
    python bench/quality.py --reuse bench/out/quality.json --methods autolrs   # rerun one method

Methods (one configuration each for every task; nothing is tuned per task):

* baselines, trained in process with torch's schedulers: ``constant``, ``cosine`` (to 0 over the
  budget) and ``step`` (x0.1 at 50% and 75% of the budget), each at the 5 LRs of the task's grid.
  The *one-run default* is cosine from the practitioner's LR (0.1 for SGD with momentum, 1e-3
  for Adam/AdamW); the *grid best* is the grid schedule with the best median over the seeds.
* tuners, through a real server (one ``autolrs-server`` process for the whole suite) and the
  real callback, with the optimizer built at the practitioner's LR, a ``val_fn`` on the task's
  validation split and ``max_steps`` set: see ``METHODS``.
* ``range_test``: an in-loop range test (fastai's sweep, 1e-7 to 10 over 100 steps) with its
  default suggestion applied, then cosine from it over the steps left.
* ``loss_diff``: 20 LRs (1e-6 to 1) x 10 subsamples of one-step loss changes (each probe counted as a step
  of search), then cosine from its pick over the steps left.

Per task and budget the report has, for every method: the median and worst seed of the final
test metric, collapses (a final metric at chance level or beyond it, or non-finite: see
``tasks.collapse_level``), the steps needed to first reach the grid best's median final metric
(search steps included; evaluations in steps a restore threw away, the callback's
``discarded`` windows, do not count), and the share of
steps spent searching. JSON under bench/out/ and one summary plot.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path

import torch

import tasks as task_registry
from benchlib import write_report
from tasks import TASKS, Batches, Task, collapse_level, collapsed, evaluate, metric_of

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"

SCHEDULES = ("constant", "cosine", "step")
EVALS_PER_RUN = 10  # test-set evaluations along a run (for steps-to-target)
RANGE_TEST = {"start_lr": 1e-7, "end_lr": 10.0, "num_iter": 100, "apply_suggestion": True}
LOSS_DIFF = {"num_evals": 20, "num_subsamples": 10, "apply_best": True}  # grid 1e-6 .. 1 (its default)

#: Tuner methods: (registered tuner, its config, factor on the practitioner's LR for the
#: optimizer). ``autolrs-30`` is AutoLRS with 30-step trials; ``@low``/``@high``: the optimizer's
#: LR 10x too low or too high.
METHODS: dict[str, tuple[str, dict, float]] = {
    "auto": ("auto", {}, 1.0),
    "autolrs": ("autolrs", {}, 1.0),
    "autolrs-30": ("autolrs", {"tau": 300, "tau_max": 2400, "k": 10, "trial_fraction": 0.1,
                               "lr_min": 1e-3, "lr_max": 1.0}, 1.0),
    "range_test": ("range_test", RANGE_TEST, 1.0),
    "loss_diff": ("loss_diff", LOSS_DIFF, 1.0),
    "hd": ("hd", {}, 1.0),
    # Not in the default run: the optimizer's LR off by 10x; the published AutoLRS; each range-test rule.
    "auto@low": ("auto", {}, 0.1),
    "auto@high": ("auto", {}, 10.0),
    "autolrs-paper": ("autolrs", {"preset": "paper"}, 1.0),
    "autolrs-auto": ("autolrs", {"lr_min": "auto", "lr_max": "auto"}, 1.0),
    "autolrs-valstart": ("autolrs", {"val_from": "start"}, 1.0),
    "autolrs-k5": ("autolrs", {"k": 5}, 1.0),
    "auto-c4": ("auto", {"candidates": 4, "spacing": 3.0, "trial_fraction": 0.025}, 1.0),
    "auto-noval": ("auto", {"use_val": False}, 1.0),
    **{f"range_test-{rule}": ("range_test", {**RANGE_TEST, "method": rule}, 1.0)
       for rule in ("steepest", "valley", "minimum")},
}
DEFAULT_METHODS = ("auto", "autolrs", "autolrs-30", "range_test", "loss_diff", "hd", "auto@low", "auto@high")
QUICK_TASKS = ("digits_mlp", "digits_cnn", "cancer_small")


# ------------------------------------------------------------------------------ one run


class Recorder:
    """Test-set evaluations along a run, at global steps (search steps included)."""

    def __init__(self, task: Task, model: torch.nn.Module, steps: int):
        self.task, self.model = task, model
        self.every = max(1, steps // EVALS_PER_RUN)
        self.curve: list[list[float]] = []

    def after_step(self, step: int) -> None:
        if step % self.every == 0:
            split = self.task.data()
            self.curve.append([step, metric_of(self.task, evaluate(self.task, self.model, split.test_x, split.test_y))])


def _train_steps(task: Task, model, optimizer, batches, steps: int, recorder: Recorder, start: int = 0,
                 scheduler=None, cb=None) -> tuple[int, bool]:
    """Train from global step ``start`` up to ``steps``; returns (last step, diverged). Without
    a callback a non-finite loss (checked every 50 steps) ends the run: nothing can bring NaN
    weights back. With one, the tuner decides (a diverged trial is restored)."""
    step = start
    for xb, yb in batches:
        if step >= steps:
            break
        optimizer.zero_grad(set_to_none=True)
        loss = task.criterion(model(xb), yb)
        loss.backward()
        optimizer.step()
        step += 1
        if scheduler is not None:
            scheduler.step()
        if cb is not None:
            cb.step(loss)
        recorder.after_step(step)
        if cb is None and step % 50 == 0 and not math.isfinite(float(loss.detach())):
            return step, True
        if cb is not None and cb.should_stop:
            break
    return step, False


def _schedule(name: str, optimizer, steps: int):
    if steps <= 0:
        return None
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=0.0)
    if name == "step":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, [steps // 2, (3 * steps) // 4], gamma=0.1)
    return None


def run_baseline(task: Task, seed: int, steps: int, schedule: str, lr: float) -> dict:
    model = task.model(seed)
    optimizer = task.make_optimizer(model, lr)
    recorder = Recorder(task, model, steps)
    _, diverged = _train_steps(task, model, optimizer, iter(Batches(task, seed)), steps, recorder,
                               scheduler=_schedule(schedule, optimizer, steps))
    return _finish(task, model, recorder, {"search_steps": 0, "diverged": diverged})


def run_tuner(task: Task, seed: int, steps: int, method: str, endpoint: str, lr: float | None = None) -> dict:
    """One run of a tuner method through the server; ``lr``: the optimizer's initial LR
    (default: the practitioner's)."""
    from autolrs.callbacks import AutoLRS

    tuner, config, factor = METHODS[method]
    lr = task.default_lr * factor if lr is None else lr
    model = task.model(seed)
    optimizer = task.make_optimizer(model, lr)
    split = task.data()
    batches = iter(Batches(task, seed))
    recorder = Recorder(task, model, steps)
    current: dict = {}

    def val_fn() -> float:
        return evaluate(task, model, split.val_x, split.val_y)["loss"]

    def probe_fn():
        return task.criterion(model(current["x"]), current["y"])

    job = f"q-{task.name}-{method.replace('@', '-at-')}-{seed}-{uuid.uuid4().hex[:8]}"
    extra: dict = {}
    search = 0
    if tuner == "loss_diff":
        extra["probe_fn"] = probe_fn

        def remember(it):
            for xb, yb in it:
                current["x"], current["y"] = xb, yb
                yield xb, yb
        batches = remember(batches)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with AutoLRS(model, optimizer, tuner=tuner, config=dict(config), server=endpoint, job=job, val_fn=val_fn,
                     max_steps=steps, seed=seed, timeout=30.0, **extra) as cb:
            step, diverged = _train_steps(task, model, optimizer, batches, steps, recorder, cb=cb)
            chosen = cb.lr
        discarded = list(cb.discarded)
    summary = cb.summary or {}  # the tuner's account of the job, from the goodbye reply
    if tuner in ("range_test", "loss_diff"):
        search = step if tuner == "range_test" else step + LOSS_DIFF["num_evals"] * LOSS_DIFF["num_subsamples"]
        # The tuner restored the weights and set its pick: train on with cosine from it.
        step = min(search, steps)
        if not diverged and step < steps:
            scheduler = _schedule("cosine", optimizer, steps - step)
            step, diverged = _train_steps(task, model, optimizer, batches, steps, recorder, start=step,
                                          scheduler=scheduler)
    elif tuner in ("autolrs", "auto"):
        search = int(summary.get("search_steps", 0)) + int(summary.get("bounds_steps", 0))
    info = {"search_steps": search, "diverged": diverged, "chosen_lr": chosen, "job": job,
            "off_path": discarded}
    if tuner == "auto":
        info["auto"] = {k: summary.get(k) for k in ("sweep", "candidates", "trials", "events", "stop_reason", "peak")}
    if tuner == "autolrs":
        info["stages"] = summary.get("winners", [])
    return _finish(task, model, recorder, info)


def _finish(task: Task, model, recorder: Recorder, info: dict) -> dict:
    split = task.data()
    final = evaluate(task, model, split.test_x, split.test_y)
    if info.get("diverged"):
        final = {"loss": math.inf, "accuracy": None if task.loss == "mse" else 0.0}
    metric = metric_of(task, final)
    if not math.isfinite(final["loss"]):
        metric = 0.0 if task.higher_is_better else math.inf
    off = info.get("off_path") or []
    curve = [pt for pt in recorder.curve if not any(a < pt[0] < b for a, b in off)]
    return {"metric": metric, "test_loss": final["loss"], "test_accuracy": final["accuracy"],
            "collapsed": collapsed(task, final), "curve": curve, **info}


# ------------------------------------------------------------------------------ the matrix


def plan_runs(args) -> list[dict]:
    runs = []
    for name in args.tasks:
        task = TASKS[name]
        for budget in args.budgets:
            steps = task.steps(budget)
            for seed in args.seeds:
                if not args.no_baselines:
                    for sched in SCHEDULES:
                        for lr in task.grid:
                            runs.append({"task": name, "budget": budget, "steps": steps, "seed": seed,
                                         "method": sched, "lr": lr})
                for method in args.methods:
                    runs.append({"task": name, "budget": budget, "steps": steps, "seed": seed,
                                 "method": method, "lr": None})
    # Longest first, so the pool's tail is short.
    return sorted(runs, key=lambda r: -r["steps"] * _cost(TASKS[r["task"]]))


def _cost(task: Task) -> float:
    return {"cifar_cnn": 8.0, "digits_cnn": 2.0, "digits_gru": 2.0, "digits_attention": 2.5}.get(task.name, 0.4)


_WORKER: dict = {}


def _init_worker(endpoint: str) -> None:
    torch.set_num_threads(1)
    _WORKER.update(endpoint=endpoint)


def _execute(run: dict) -> dict:
    task = TASKS[run["task"]]
    started, cpu = time.time(), time.process_time()
    try:
        if run["method"] in SCHEDULES:
            row = run_baseline(task, run["seed"], run["steps"], run["method"], run["lr"])
        else:
            row = run_tuner(task, run["seed"], run["steps"], run["method"], _WORKER["endpoint"], lr=run.get("lr"))
    except Exception as exc:  # noqa: BLE001 - one failed run is reported, the suite goes on
        row = {"metric": None, "error": f"{type(exc).__name__}: {exc}", "collapsed": True, "curve": []}
    # CPU seconds of this worker (training and callback): unlike wall time, not inflated by
    # whatever else the machine runs; the server's share is small and not included.
    return {**run, **row, "wall_s": round(time.time() - started, 2), "cpu_s": round(time.process_time() - cpu, 2)}


def run_matrix(runs: list[dict], jobs: int, work: Path) -> list[dict]:
    from autolrs.server.process import ServerProcess

    rows = []
    started = time.time()
    with ServerProcess(work / "state", log_path=work / "server.log", lifeline=True) as server:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(jobs, initializer=_init_worker, initargs=(server.endpoint,)) as pool:
            for i, row in enumerate(pool.imap_unordered(_execute, runs), 1):
                rows.append(row)
                if i % 25 == 0 or i == len(runs):
                    print(f"  {i}/{len(runs)} runs  ({time.time() - started:.0f}s)", flush=True)
    return rows


# ------------------------------------------------------------------------------ analysis


def _label(row: dict) -> str:
    return row["method"] if row["method"] not in SCHEDULES else f"{row['method']}@{row['lr']:g}"


def _median(xs: list[float]) -> float:
    return statistics.median(xs)


def analyse(rows: list[dict]) -> dict:
    """Per (task, budget): each method's median, worst seed, collapses, steps to the grid
    best's median and search share; the grid best and the one-run default."""
    out: dict = {}
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["budget"]), []).append(r)
    for (tname, budget), rs in sorted(groups.items()):
        task = TASKS[tname]
        better = max if task.higher_is_better else min
        worse = min if task.higher_is_better else max
        by_label: dict[str, list[dict]] = {}
        for r in rs:
            by_label.setdefault(_label(r), []).append(r)
        stats = {}
        for label, group in by_label.items():
            metrics = [_metric_value(task, r) for r in group]
            stats[label] = {"median": _median(metrics), "worst": worse(metrics), "n": len(metrics),
                            "collapses": sum(bool(r.get("collapsed")) for r in group),
                            "errors": [r["error"] for r in group if r.get("error")],
                            "search_share": statistics.fmean(r.get("search_steps", 0) / r["steps"] for r in group),
                            "chosen_lr": [r.get("chosen_lr") for r in group] if r_is_tuner(group) else None}
        grid = {k: v for k, v in stats.items() if by_label[k][0]["method"] in SCHEDULES}
        entry: dict = {"steps": rs[0]["steps"], "methods": stats, "higher_is_better": task.higher_is_better,
                       "collapse_level": collapse_level(task)}
        if grid:
            best = better(grid, key=lambda k: grid[k]["median"])
            default = f"cosine@{task.default_lr:g}"
            target = grid[best]["median"]
            entry.update(grid_best=best, grid_best_median=target, default=default,
                         default_median=grid.get(default, {}).get("median"))
            for label, group in by_label.items():
                reach = [_first_reach(task, r["curve"], target) for r in group]
                stats[label]["steps_to_grid_best"] = _median([x for x in reach if x is not None]) \
                    if all(x is not None for x in reach) else None
                stats[label]["gap_to_grid_best"] = _gap(task, stats[label]["median"], target)
                if entry["default_median"] is not None:
                    stats[label]["gap_to_default"] = _gap(task, stats[label]["median"], entry["default_median"])
        out[f"{tname}/{budget}"] = entry
    return out


def r_is_tuner(group: list[dict]) -> bool:
    return group[0]["method"] not in SCHEDULES


def _metric_value(task: Task, row: dict) -> float:
    m = row.get("metric")
    if m is None or not math.isfinite(m):
        return 0.0 if task.higher_is_better else math.inf
    return m


def _gap(task: Task, value: float, reference: float) -> float:
    """How far ``value`` is behind ``reference``: accuracy points (x100) for accuracy, and the
    relative excess (percent) for a loss. Negative: better than the reference."""
    if task.higher_is_better:
        return 100.0 * (reference - value)
    if not math.isfinite(value):
        return math.inf
    return 100.0 * (value - reference) / abs(reference)


def _first_reach(task: Task, curve: list, target: float) -> int | None:
    for step, value in curve:
        if (value >= target - 1e-12) if task.higher_is_better else (value <= target + 1e-12):
            return int(step)
    return None


# ------------------------------------------------------------------------------ report


def print_report(analysis: dict, methods: list[str]) -> None:
    for key, entry in analysis.items():
        task = TASKS[key.split("/")[0]]
        unit = "pts" if task.higher_is_better else "%"
        level = "MSE" if task.loss == "mse" else "accuracy"
        print(f"\n{key} ({entry['steps']} steps; metric: test {task.metric}; collapse: test {level} at or beyond "
              f"{entry['collapse_level']:.3f})")
        if "grid_best" in entry:
            print(f"  grid best {entry['grid_best']} median {entry['grid_best_median']:.4f}; "
                  f"one-run default {entry['default']} {_fmt(entry['default_median'])}")
        print(f"  {'method':<16}{'median':>9}{'worst':>9}{'collapses':>11}{'gap best':>10}{'gap dflt':>10}"
              f"{'steps->best':>13}{'search':>8}")
        rows = [(m, entry["methods"][m]) for m in methods if m in entry["methods"]]
        if "grid_best" in entry:
            for label in dict.fromkeys((entry["grid_best"], entry["default"])):
                if label in entry["methods"]:
                    rows.append((label, entry["methods"][label]))
        for label, s in rows:
            print(f"  {label:<16}{_fmt(s['median']):>9}{_fmt(s['worst']):>9}{s['collapses']:>7}/{s['n']:<3}"
                  f"{_fmt(s.get('gap_to_grid_best'), '+.2f'):>8}{unit[0]:>2}{_fmt(s.get('gap_to_default'), '+.2f'):>8}"
                  f"{unit[0]:>2}{_fmt(s.get('steps_to_grid_best'), '.0f', 'never'):>13}{100 * s['search_share']:>7.0f}%")
            for err in s["errors"][:2]:
                print(f"      error: {err[:200]}")


def markdown(analysis: dict, methods: list[str]) -> str:
    """The report as markdown tables for the docs: per budget, one row per task with the grid
    best, the one-run default and each method's median (gap to the grid best), worst seed and
    collapses."""
    out = []
    for budget in ("short", "long"):
        keys = [k for k in analysis if k.endswith("/" + budget)]
        if not keys:
            continue
        out.append(f"**{budget} budget** (median over seeds; gap to the grid best in accuracy points, or % of the loss; "
                   "worst seed; collapses/seeds)\n")
        out.append("| task | grid best | one-run default | " + " | ".join(methods) + " |")
        out.append("|---" * (3 + len(methods)) + "|")
        for key in keys:
            e = analysis[key]
            task = TASKS[key.split("/")[0]]
            cells = [f"{key.split('/')[0]} ({e['steps']})",
                     f"{e.get('grid_best', '-')} {_fmt(e.get('grid_best_median'), '.3f')}",
                     f"{_fmt(e.get('default_median'), '.3f')} ({_fmt((e['methods'].get(e.get('default'), {}) or {}).get('gap_to_grid_best'), '+.1f')})"]
            for m in methods:
                st = e["methods"].get(m)
                if st is None:
                    cells.append("-")
                    continue
                cells.append(f"{_fmt(st['median'], '.3f')} ({_fmt(st.get('gap_to_grid_best'), '+.1f')}), "
                             f"w {_fmt(st['worst'], '.3f')}, {st['collapses']}/{st['n']}")
            out.append("| " + " | ".join(cells) + " |")
            del task
        out.append("")
    return "\n".join(out)


def _fmt(x, spec=".4f", none="-"):
    if x is None:
        return none
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return format(x, spec)


def plot(analysis: dict, methods: list[str], path: Path) -> None:
    """One panel per task and budget: each method's median gap to the grid best, with its worst
    seed as a whisker (accuracy points, or percent of the loss)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(analysis)
    cols = 2
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(11, 2.2 * rows + 0.5), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        entry = analysis[key]
        task = TASKS[key.split("/")[0]]
        labels = [m for m in methods if m in entry["methods"]] + [entry.get("default", "")]
        labels = [m for m in labels if m in entry["methods"]]
        ref = entry.get("grid_best_median")
        if ref is None:
            continue
        med = [_gap(task, entry["methods"][m]["median"], ref) for m in labels]
        worst = [_gap(task, entry["methods"][m]["worst"], ref) for m in labels]
        cap = 50.0
        med = [min(v, cap) for v in med]
        worst = [min(v, cap) for v in worst]
        ys = range(len(labels))
        ax.barh(ys, med, color=["tab:red" if entry["methods"][m]["collapses"] else "tab:blue" for m in labels])
        ax.scatter(worst, ys, marker="|", color="black", s=80, zorder=3)
        ax.axvline(0, color="gray", lw=0.8)
        ax.set_yticks(list(ys), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_title(f"{key}: gap to grid best ({'points' if task.higher_is_better else '% of loss'})", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
    for ax in axes.flat[len(keys):]:
        ax.axis("off")
    fig.suptitle("median gap to the best grid schedule (bar; red: a seed collapsed), worst seed (|)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


# ------------------------------------------------------------------------------ CLI


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", choices=list(TASKS), default=None)
    p.add_argument("--methods", nargs="*", choices=list(METHODS), default=None)
    p.add_argument("--budgets", nargs="+", choices=("short", "long"), default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0..4")
    p.add_argument("--no-baselines", action="store_true", help="tuners only (with --reuse: baselines from there)")
    p.add_argument("--reuse", default=None, metavar="JSON",
                   help="keep the rows of an earlier report that this run does not redo (same tasks and budgets)")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (default 2: one per core)")
    p.add_argument("--quick", action="store_true", help=f"tasks {', '.join(QUICK_TASKS)}, seeds 0 1, short budget")
    p.add_argument("--out", default=None, help="JSON path (default bench/out/quality.json, quick: quality_quick.json)")
    p.add_argument("--report", default=None, metavar="JSON",
                   help="run nothing: analyse an earlier report again (its JSON and plot are rewritten) and print it")
    args = p.parse_args(argv)
    if args.quick:
        args.tasks = args.tasks or list(QUICK_TASKS)
        args.seeds = args.seeds or [0, 1]
        args.budgets = args.budgets or ["short"]
    args.tasks = args.tasks or list(TASKS)
    args.seeds = args.seeds if args.seeds is not None else [0, 1, 2, 3, 4]
    args.budgets = args.budgets or ["short", "long"]
    args.methods = list(DEFAULT_METHODS) if args.methods is None else args.methods
    args.out = Path(args.out or OUT / ("quality_quick.json" if args.quick else "quality.json"))
    return args


def report_only(path: Path) -> dict:
    report = json.loads(path.read_text())
    rows = report["rows"]
    methods = sorted({r["method"] for r in rows if r["method"] not in SCHEDULES}, key=list(METHODS).index)
    report["analysis"] = analyse(rows)
    print_report(report["analysis"], methods)
    print("\n" + markdown(report["analysis"], methods))
    write_report(path, report)
    plot(report["analysis"], methods, path.with_suffix(".png"))
    return report


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.report:
        return report_only(Path(args.report))
    runs = plan_runs(args)
    print(f"{len(runs)} runs ({len(args.tasks)} tasks x {len(args.budgets)} budgets x {len(args.seeds)} seeds), "
          f"{args.jobs} at a time", flush=True)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="autolrs-quality-") as tmp:
        rows = run_matrix(runs, args.jobs, Path(tmp))
    if args.reuse:
        redone = {(r["task"], r["budget"], r["seed"], _label(r)) for r in rows}
        old = json.loads(Path(args.reuse).read_text())["rows"]
        rows += [r for r in old if r["task"] in args.tasks and r["budget"] in args.budgets
                 and r["seed"] in args.seeds and (r["task"], r["budget"], r["seed"], _label(r)) not in redone]
    analysis = analyse(rows)
    methods = sorted({r["method"] for r in rows if r["method"] not in SCHEDULES}, key=list(METHODS).index)
    print_report(analysis, methods)
    wall = time.time() - started
    cpu = sum(r.get("cpu_s", 0.0) for r in rows)
    print(f"\nwall time {wall:.0f}s; the runs' CPU time {cpu:.0f}s (about {cpu / 2 / 60:.0f} minutes on 2 idle cores)")
    report = {
        "benchmark": "quality",
        "config": {"tasks": args.tasks, "budgets": args.budgets, "seeds": args.seeds, "methods": methods,
                   "tuner_configs": {m: METHODS[m] for m in methods}, "grid": {"sgd": task_registry.SGD_GRID,
                                                                               "adam": task_registry.ADAM_GRID},
                   "reuse": args.reuse, "quick": args.quick,
                   "steps": {t: {b: TASKS[t].steps(b) for b in args.budgets} for t in args.tasks}},
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "cpu_count": os.cpu_count(), "machine": platform.machine()},
        "analysis": analysis,
        "rows": rows,
        "wall_time_s": round(wall, 1),
        "cpu_time_s": round(cpu, 1),
    }
    write_report(args.out, report)
    plot(analysis, methods, args.out.with_suffix(".png"))
    return report


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
