"""Alrao against plain SGD on a grid of LRs, on the CIFAR-10 subset.

Alrao samples one LR per unit in [lr_min, lr_max] (default [1e-5, 10], the paper's CIFAR
interval) and trains 10 classifier copies with log-spaced LRs over it; SGD runs at each LR of a
grid over the same interval. Same model (examples/cifar_models.py small_cnn), same data order and
augmentation, same number of steps, no momentum or weight decay for either (the paper's setting).
The paper's claim: Alrao's accuracy is close to that of SGD at its best LR, without tuning.

Also measured: the cost of an Alrao step (the model with 10 copies, the mixture's backward,
``alrao_step``) as a ratio to a plain SGD step of the same network, side by side in interleaved
blocks of steps on one random batch (machine noise hits both alike), for models from a tiny MLP
to ResNet-18 (``COST_MODELS``), and from the median step time of the CIFAR runs.

    python bench/alrao.py [--steps 1200] [--data-dir /work/shared/data/cifar-10-subset-py]
                          [--out bench/out/alrao.json]
    python bench/alrao.py --cost-only [--cost-models mlp_digits resnet18]   # the step costs alone
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from benchlib import write_report

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
from alrao_cifar import alrao_train_step, build_alrao, split_last_linear  # noqa: E402
from cifar_data import Batches, evaluate, load_cifar10  # noqa: E402
from cifar_models import MODELS, small_cnn  # noqa: E402

DEFAULT_DATA = "/work/shared/data/cifar-10-subset-py"
GRID = [1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0]


def sgd_setup(lr: float, seed: int):
    torch.manual_seed(seed)
    net = small_cnn()
    return net, torch.optim.SGD(net.parameters(), lr=lr)


def sgd_step(net, opt, xb, yb) -> torch.Tensor:
    opt.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(net(xb), yb)
    loss.backward()
    opt.step()
    return loss.detach()


def train(name: str, model, step_fn, data, steps: int, seed: int) -> dict:
    train_x, train_y, test_x, test_y = data
    batches = Batches(train_x, train_y, 128, seed, train=True, device=torch.device("cpu"))
    test = Batches(test_x, test_y, 500, seed, train=False, device=torch.device("cpu"))
    losses, times, error = [], [], None
    started = time.perf_counter()
    model.train()
    try:
        while len(losses) < steps:
            for xb, yb in batches.epoch():
                t0 = time.perf_counter()
                losses.append(step_fn(xb, yb))
                times.append(time.perf_counter() - t0)
                if len(losses) >= steps:
                    break
    except ValueError as exc:  # Alrao's non-finite features: the run diverged
        error = str(exc)
    wall = time.perf_counter() - started
    test_loss, test_acc = (math.nan, 0.1) if error else evaluate(model, test)
    curve = torch.stack(losses).tolist() if losses else []
    tail = [v for v in curve[-50:]]
    row = {"name": name, "steps": len(curve), "test_accuracy": test_acc, "test_loss": test_loss,
           "final_train_loss": statistics.fmean(tail) if tail else math.nan,
           "diverged": bool(error) or not all(math.isfinite(v) for v in tail), "error": error,
           "median_step_s": statistics.median(times) if times else math.nan, "wall_s": wall,
           "loss_every_50": curve[::50]}
    print(f"{name:>24}  acc {test_acc:.4f}  test loss {test_loss:8.4f}  train loss(last 50) "
          f"{row['final_train_loss']:8.4f}  {row['median_step_s'] * 1e3:6.1f} ms/step  {wall:6.1f} s", flush=True)
    return row


def _mlp(sizes: list[int]) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in zip(sizes[:-2], sizes[1:-1]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(sizes[-2], sizes[-1]))


#: Networks whose step cost is measured: (builder, input shape of one example, batch size). Each
#: is an ``nn.Sequential`` ending with its output Linear (what Alrao replaces by the copies).
COST_MODELS = {
    "mlp_digits": (lambda: _mlp([64, 64, 64, 10]), (64,), 32),          # the quality suite's digits MLP
    "small_cnn_w8_16px": (lambda: small_cnn(width=8), (3, 16, 16), 32),  # the suite's cifar_cnn
    "mlp_wide": (lambda: _mlp([784, 1024, 1024, 10]), (784,), 128),     # 1.8 M parameters, cheap compute
    "small_cnn_32px": (lambda: small_cnn(), (3, 32, 32), 128),           # this benchmark's CIFAR model
    "resnet18_32px": (lambda: MODELS["resnet18"](), (3, 32, 32), 32),   # 11 M parameters
}


def _alrao_of(net: nn.Module, seed: int):
    from autolrs.optim import AlraoModel, AlraoSGD, LinearClassifier

    pre, last = split_last_linear(net)
    model = AlraoModel("classification", nn.NLLLoss(), pre, 10, LinearClassifier, last.in_features,
                       last.out_features)
    return model, AlraoSGD(model, 1e-5, 1.0, seed=seed)


def interleaved_cost(name: str, blocks: int, min_block_s: float, seed: int) -> dict:
    """Median time per step of Alrao and plain SGD (same network, no momentum) over alternating
    blocks on one random batch; a block has as many steps as fill ``min_block_s`` (at least 2)."""
    build, shape, batch = COST_MODELS[name]
    g = torch.Generator().manual_seed(seed)
    xb, yb = torch.randn(batch, *shape, generator=g), torch.randint(0, 10, (batch,), generator=g)
    torch.manual_seed(seed)
    net = build()
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    torch.manual_seed(seed)
    amodel, aopt = _alrao_of(build(), seed)
    runners = {"sgd": lambda: sgd_step(net, opt, xb, yb), "alrao": lambda: alrao_train_step(amodel, aopt, xb, yb)}
    t0 = time.perf_counter()
    for run in runners.values():  # warm-up
        for _ in range(2):
            run()
    block_steps = max(2, int(min_block_s / ((time.perf_counter() - t0) / 4)))
    per_step = {k: [] for k in runners}
    for b in range(blocks):
        order = ["sgd", "alrao"] if b % 2 == 0 else ["alrao", "sgd"]
        for key in order:
            t0 = time.perf_counter()
            for _ in range(block_steps):
                runners[key]()
            per_step[key].append((time.perf_counter() - t0) / block_steps)
    sgd, alrao = statistics.median(per_step["sgd"]), statistics.median(per_step["alrao"])
    ratios = [a / s for a, s in zip(per_step["alrao"], per_step["sgd"])]
    return {"model": name, "parameters": sum(p.numel() for p in net.parameters()), "batch": batch,
            "sgd_step_s": sgd, "alrao_step_s": alrao, "ratio": alrao / sgd,
            "block_ratio_min": min(ratios), "block_ratio_max": max(ratios), "blocks": blocks,
            "block_steps": block_steps}


def cost_table(names: list[str], blocks: int, min_block_s: float, seed: int) -> list[dict]:
    rows = []
    print(f"\nstep cost, Alrao (10 copies) / plain SGD, interleaved blocks ({blocks} of each, "
          f"{torch.get_num_threads()} thread(s), load average {os.getloadavg()[0]:.1f}):")
    print(f"  {'model':<20}{'params':>11}{'batch':>7}{'sgd ms':>9}{'alrao ms':>10}{'ratio':>8}  block ratios")
    for name in names:
        r = interleaved_cost(name, blocks, min_block_s, seed)
        rows.append(r)
        print(f"  {name:<20}{r['parameters']:>11,}{r['batch']:>7}{r['sgd_step_s'] * 1e3:>9.2f}"
              f"{r['alrao_step_s'] * 1e3:>10.2f}{r['ratio']:>8.2f}  {r['block_ratio_min']:.2f}-{r['block_ratio_max']:.2f}",
              flush=True)
    return rows


def parameter_memory(seed: int) -> dict:
    """Numbers stored for the model and the optimizer: parameters, per-unit LRs."""
    net, _ = sgd_setup(0.01, seed)
    model, opt = build_alrao("small_cnn", 1e-5, 10.0, seed=seed)
    return {"sgd_parameters": sum(p.numel() for p in net.parameters()),
            "alrao_parameters": sum(p.numel() for p in model.parameters()),
            "alrao_unit_lrs": sum(t.numel() for t in opt.unit_lrs())}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--lr-min", type=float, default=1e-5)
    p.add_argument("--lr-max", type=float, default=10.0)
    p.add_argument("--n-classifiers", type=int, default=10)
    p.add_argument("--grid", type=float, nargs="+", default=GRID)
    p.add_argument("--data-dir", default=DEFAULT_DATA)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1: on a shared 2-core machine more threads "
                        "oversubscribe and make the timings erratic)")
    p.add_argument("--no-batch-variant", action="store_true",
                   help="skip Alrao with the whole-batch Switch likelihood (likelihood='batch')")
    p.add_argument("--cost-only", action="store_true", help="measure the step costs only")
    p.add_argument("--cost-models", nargs="+", choices=list(COST_MODELS), default=list(COST_MODELS))
    p.add_argument("--cost-blocks", type=int, default=6, help="interleaved blocks of each (default 6)")
    p.add_argument("--cost-block-s", type=float, default=1.0, help="seconds a block lasts at least (default 1)")
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "alrao.json"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cost_only:
        started = time.time()
        cost = cost_table(args.cost_models, args.cost_blocks, args.cost_block_s, args.seed)
        result = {"config": {k: v for k, v in vars(args).items() if k != "out"}, "cost": cost,
                  "load_average": os.getloadavg(), "wall_s": time.time() - started}
        write_report(Path(args.out).with_name("alrao_cost.json"), result)
        return result
    data = load_cifar10(Path(args.data_dir), download=False)
    print(f"CIFAR-10 subset: {len(data[0])} train / {len(data[2])} test images, small_cnn, batch 128, "
          f"{args.steps} steps, {torch.get_num_threads()} threads", flush=True)
    started = time.time()
    rows = []
    variants = [("alrao", "mean")] + ([] if args.no_batch_variant else [("alrao (batch switch)", "batch")])
    for name, likelihood in variants:
        model, opt = build_alrao("small_cnn", args.lr_min, args.lr_max, args.n_classifiers, seed=args.seed,
                                 likelihood=likelihood)
        row = train(name, model, lambda xb, yb: alrao_train_step(model, opt, xb, yb), data, args.steps, args.seed)
        row.update(lr_min=args.lr_min, lr_max=args.lr_max, posterior=model.posterior().tolist(),
                   classifier_lrs=opt.classifier_lrs(), posterior_bars=model.repr_posterior())
        print(f"{'':>24}  posterior over copies (LR {args.lr_min:g} .. {args.lr_max:g}): {model.repr_posterior()}")
        rows.append(row)
    for lr in args.grid:
        net, opt = sgd_setup(lr, args.seed)
        row = train(f"sgd lr={lr:g}", net, lambda xb, yb: sgd_step(net, opt, xb, yb), data, args.steps, args.seed)
        row["lr"] = lr
        rows.append(row)
    cost_rows = cost_table(args.cost_models, args.cost_blocks, args.cost_block_s, args.seed)
    cost = next((r for r in cost_rows if r["model"] == "small_cnn_32px"), cost_rows[0])
    sgd_rows = [r for r in rows if "lr" in r]
    best = max(sgd_rows, key=lambda r: r["test_accuracy"])
    alrao = rows[0]
    sgd_median = statistics.median(r["median_step_s"] for r in sgd_rows)
    result = {
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "rows": rows, "best_sgd": {"lr": best["lr"], "test_accuracy": best["test_accuracy"]},
        "alrao_minus_best_sgd": alrao["test_accuracy"] - best["test_accuracy"],
        "cost": {**cost, "ratio_from_runs": alrao["median_step_s"] / sgd_median}, "cost_by_model": cost_rows,
        "memory": parameter_memory(args.seed), "wall_s": time.time() - started,
    }
    print("\n| method | test accuracy | test loss | train loss (last 50 steps) | ms/step |")
    print("|---|---|---|---|---|")
    for r in rows:
        mark = " (best SGD)" if r is best else ""
        print(f"| {r['name']}{mark} | {r['test_accuracy']:.4f} | {r['test_loss']:.4f} | "
              f"{r['final_train_loss']:.4f}{' diverged' if r['diverged'] else ''} | {r['median_step_s'] * 1e3:.1f} |")
    print(f"\nAlrao - best SGD (lr={best['lr']:g}): {result['alrao_minus_best_sgd']:+.4f} accuracy")
    print(f"cost per step: Alrao/SGD = {cost['ratio']:.3f} interleaved ({cost['alrao_step_s'] * 1e3:.1f} vs "
          f"{cost['sgd_step_s'] * 1e3:.1f} ms), {result['cost']['ratio_from_runs']:.3f} from the runs' medians")
    print(f"memory: {result['memory']}; total {result['wall_s']:.0f} s")
    write_report(args.out, result)
    return result


if __name__ == "__main__":
    main()
