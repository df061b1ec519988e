"""The loss_diff tuner on the CIFAR-10 subset: time of a tune and the LR it picks, against the
range test's suggestions (``LRFinder`` through the same server) and the best grid LR of the
AutoLRS benchmark (bench/autolrs_cifar10.py).

    python bench/loss_diff.py [--num-evals 20] [--num-subsamples 20] [--batch-size 128]

Model and optimizer are those of the CIFAR-10 example and the AutoLRS benchmark: small_cnn,
SGD(momentum 0.9, weight decay 5e-4), batch 128, at initialisation. The tune runs through
``LossDiffFinder`` (a real server process, started before any timing); the same probes are also
run in process (``run_probes`` on the same batches, no server) to show what the server adds.
Prints a table and writes ``bench/out/loss_diff.json``. The AutoLRS benchmark's figures come
from ``bench/out/autolrs_cifar10.json`` when it exists, else its recorded result (1,500 steps:
best constant LR 0.1, best cosine base LR 0.3).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchlib import write_report

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

from autolrs import delta_stats, lr_curve  # noqa: E402
from autolrs.callbacks import LossDiffFinder, LRFinder  # noqa: E402
from autolrs.callbacks.probe import run_probes  # noqa: E402
from autolrs.callbacks.state import CheckpointStore  # noqa: E402
from autolrs.server import ServerProcess  # noqa: E402

CIFAR_DIR = Path("/work/shared/data/cifar-10-subset-py")
#: bench/autolrs_cifar10.py at 1,500 steps (seed 0), used when its JSON is not in bench/out/.
AUTOLRS_BENCH_RECORDED = {"source": "recorded (bench/autolrs_cifar10.py, 1500 steps)",
                          "best_lr": {"constant": 0.1, "cosine": 0.3}}


def make_batches(num: int, batch_size: int, seed: int = 0):
    from cifar_data import load_cifar10, normalize

    x, y, _, _ = load_cifar10(CIFAR_DIR, download=False)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(x), (num, batch_size), generator=g)
    return [(normalize(x[i]), y[i]) for i in idx]


def make_model_and_optimizer(seed: int = 0, lr: float = 0.05):
    from cifar_models import small_cnn

    torch.manual_seed(seed)
    model = small_cnn()
    return model, torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)


def plain_probes(batches, lrs):
    """The same probes in process: run_probes per batch on a fresh model, no server."""
    model, optimizer = make_model_and_optimizer()
    model.train()
    store = CheckpointStore(model, optimizer)
    store.save("start")

    def set_lr(lr):
        for g in optimizer.param_groups:
            g["lr"] = lr

    rows = []
    try:
        for x, y in batches:
            pairs = run_probes(store, "start", lrs, lambda: torch.nn.functional.cross_entropy(model(x), y), set_lr)
            rows.append([delta_stats.delta(b, a) for b, a in pairs])
    finally:
        store.close()
    return rows


def autolrs_bench_best(path: Path) -> dict:
    """The best LR per baseline family of the AutoLRS benchmark's JSON, else the recorded figures."""
    if not path.exists():
        return AUTOLRS_BENCH_RECORDED
    data = json.loads(path.read_text())
    analysis = data.get("analysis", data)
    configs, per_family = analysis.get("configs", {}), analysis.get("per_family_best", {})
    best = {fam: configs[name]["lr"] for fam, name in per_family.items() if name in configs}
    if not best:
        return AUTOLRS_BENCH_RECORDED
    return {"source": str(path.relative_to(ROOT)), "best_lr": best}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-evals", type=int, default=20)
    p.add_argument("--num-subsamples", type=int, default=20)
    p.add_argument("--lr-min", type=float, default=1e-4)
    p.add_argument("--lr-max", type=float, default=3.0)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--range-num-iter", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--autolrs-json", default=str(ROOT / "bench" / "out" / "autolrs_cifar10.json"))
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "loss_diff.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    # One extra batch: the tuner asks for one step per subsample plus one.
    batches = make_batches(args.num_subsamples + 1, args.batch_size)
    range_batches = make_batches(args.range_num_iter, args.batch_size, seed=1)
    state_dir = tempfile.TemporaryDirectory(prefix="autolrs-bench-")
    server = ServerProcess(state_dir.name, port=0, lifeline=True)
    try:
        model, optimizer = make_model_and_optimizer()
        tuner = LossDiffFinder(model, optimizer, torch.nn.functional.cross_entropy, server=server.endpoint,
                              job="bench-loss-diff")
        t = time.perf_counter()
        tuner.tune(batches, lr_min=args.lr_min, lr_max=args.lr_max, num_evals=args.num_evals,
                   num_subsamples=args.num_subsamples)
        tune_s = time.perf_counter() - t
        summary = tuner.summary
        tuner.plot(path=str(out.with_suffix(".png")))
        tuner.close()

        t = time.perf_counter()
        plain_rows = plain_probes(batches[:args.num_subsamples], summary["lrs"])
        plain_s = time.perf_counter() - t

        model, optimizer = make_model_and_optimizer(lr=1e-5)
        finder = LRFinder(model, optimizer, torch.nn.functional.cross_entropy, server=server.endpoint,
                          job="bench-loss-diff-range-test")
        t = time.perf_counter()
        finder.range_test(range_batches, end_lr=10.0, num_iter=args.range_num_iter)
        range_s = time.perf_counter() - t
        suggestions = {m: lr_curve.suggest(finder.history["lr"], finder.history["loss"], m)["lr"]
                       for m in lr_curve.METHODS}
        finder.close()
    finally:
        server.close()
        state_dir.cleanup()

    probes = args.num_evals * args.num_subsamples
    best = {m: summary["best"][m]["lr"] for m in delta_stats.METHODS}
    grid = autolrs_bench_best(Path(args.autolrs_json))
    result = {
        "data": "cifar-10 subset", "model": "small_cnn", "optimizer": "SGD(momentum=0.9, weight_decay=5e-4)",
        "batch_size": args.batch_size, "threads": args.threads, "num_evals": args.num_evals,
        "num_subsamples": args.num_subsamples, "lr_min": args.lr_min, "lr_max": args.lr_max,
        "tune_s": tune_s, "probes": probes, "ms_per_probe": 1000 * tune_s / probes,
        "plain_probes_s": plain_s, "server_over_plain": tune_s / plain_s,
        "same_deltas_as_plain": plain_rows == summary["deltas"],
        "loss_diff_best": best, "mean_curve": summary["stats"]["mean"], "lrs": summary["lrs"],
        "range_test_s": range_s, "range_test_num_iter": args.range_num_iter, "range_test_suggestions": suggestions,
        "autolrs_bench": grid,
    }
    fmt = lambda v: "None" if v is None else f"{v:.3g}"  # noqa: E731
    print(f"CIFAR-10 subset, small_cnn, SGD(0.9, wd 5e-4), batch {args.batch_size}, {args.threads} thread(s)")
    print(f"{'source':<44}{'rule':<12}{'LR':>10}")
    for m in delta_stats.METHODS:
        print(f"{f'loss_diff ({tune_s:.1f} s)':<44}{m:<12}{fmt(best[m]):>10}")
    for m, v in suggestions.items():
        print(f"{f'range test, {args.range_num_iter} iterations ({range_s:.1f} s)':<44}{m:<12}{fmt(v):>10}")
    for fam, v in grid["best_lr"].items():
        print(f"{'AutoLRS bench, best of the LR grid':<44}{fam:<12}{fmt(v):>10}")
    print(f"loss_diff: {args.num_evals} LRs x {args.num_subsamples} subsamples = {probes} probes in {tune_s:.1f} s "
          f"({result['ms_per_probe']:.1f} ms each); the same probes in process {plain_s:.1f} s "
          f"(server/plain {result['server_over_plain']:.3f}), deltas identical: {result['same_deltas_as_plain']}")
    print(f"AutoLRS bench figures from: {grid['source']}")
    write_report(out, result)


if __name__ == "__main__":
    main()
