"""HD and MARTHE against a constant LR on the CIFAR-10 subset, from a badly chosen LR.

SGD (momentum 0.9, weight decay 5e-4) on examples/cifar_models.py's small_cnn starts at an LR
10x below and 10x above ``--good-lr``; each start is trained at that constant LR, with ``hd``
and with ``marthe`` (adaptive mu), both with their default knobs, through one real server,
for the same number of steps with the same data order. Reported: final test accuracy and each
run's LR trajectory (plot + JSON).

Also measured: the time of a step of each method as a ratio to a plain step, from interleaved
blocks of steps on one batch (machine noise hits all alike), including ``hd`` reporting every
step (``every: 1``, one blocking round trip per step) to show what batching saves.

    python bench/hypergradient.py [--steps 300] [--good-lr 0.05] [--out bench/out/hypergradient.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from benchlib import write_report

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
from cifar_data import Batches, evaluate, load_cifar10  # noqa: E402
from cifar_models import small_cnn  # noqa: E402

from autolrs.callbacks import AutoLRS  # noqa: E402
from autolrs.server import ServerProcess  # noqa: E402

DEFAULT_DATA = "/work/shared/data/cifar-10-subset-py"
CPU = torch.device("cpu")
# Each tuner with its default knobs (None: a constant LR, no tuner).
TUNERS = {
    "constant": None,
    "hd": {},
    "marthe": {},
}


class Epochs:
    """An iterable over one pass of a Batches (the callback's ``val_batches`` restarts it)."""

    def __init__(self, batches: Batches):
        self.batches = batches

    def __iter__(self):
        return self.batches.epoch()


def build(lr: float, seed: int, width: int):
    torch.manual_seed(seed)
    net = small_cnn(width=width)
    return net, torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)


def step(net, opt, xb, yb, cb=None) -> torch.Tensor:
    opt.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(net(xb), yb)
    if cb is None:
        loss.backward()
    else:
        cb.backward(loss)
    opt.step()
    if cb is not None:
        cb.step(loss)
    return loss.detach()


def train(server, tuner, config, lr0, data, args) -> dict:
    train_x, train_y, val_x, val_y, test_x, test_y = data
    net, opt = build(lr0, args.seed, args.width)
    batches = Batches(train_x, train_y, args.batch_size, args.seed, train=True, device=CPU)
    val = Epochs(Batches(val_x, val_y, 256, args.seed, train=False, device=CPU))
    test = Batches(test_x, test_y, 500, args.seed, train=False, device=CPU)
    cb = None
    if config is not None:
        cb = AutoLRS(net, opt, tuner=tuner, config={**config, "every": args.every}, server=server.endpoint,
                     val_batches=val, max_steps=args.steps, seed=args.seed)
    lrs, losses = [], []
    started = time.perf_counter()
    try:
        while len(losses) < args.steps:
            for xb, yb in batches.epoch():
                lrs.append(opt.param_groups[0]["lr"])
                losses.append(step(net, opt, xb, yb, cb))
                if len(losses) >= args.steps:
                    break
    finally:
        if cb is not None:
            cb.close()
    wall = time.perf_counter() - started
    test_loss, test_acc = evaluate(net, test)
    curve = torch.stack(losses).tolist()
    row = {"tuner": tuner, "start_lr": lr0, "config": config, "test_accuracy": test_acc, "test_loss": test_loss,
           "final_train_loss": statistics.fmean(curve[-50:]), "final_lr": lrs[-1], "wall_s": wall, "lrs": lrs,
           "loss_every_10": curve[::10]}
    print(f"{tuner:>9} from {lr0:<7g} acc {test_acc:.4f}  test loss {test_loss:7.4f}  final LR {lrs[-1]:.4g}  "
          f"{wall:6.1f} s", flush=True)
    return row


def step_costs(server, data, args) -> dict:
    """Median time per step of each method over interleaved blocks on one batch."""
    xb, yb = next(Batches(data[0], data[1], args.batch_size, args.seed, train=False, device=CPU).epoch())
    val = [next(Batches(data[2], data[3], 256, args.seed, train=False, device=CPU).epoch())]
    runners, callbacks = {}, []
    variants = {"plain": None, "hd (every 10)": ("hd", 10), "hd (every 1)": ("hd", 1),
                "rtho (every 10)": ("rtho", 10), "marthe mu=0.5 (every 10)": ("marthe", 10)}
    for name, spec in variants.items():
        net, opt = build(0.01, args.seed, args.width)
        cb = None
        if spec is not None:
            extra = {"mu": 0.5} if spec[0] == "marthe" else {}
            cb = AutoLRS(net, opt, tuner=spec[0], config={"beta": 0.0, "every": spec[1], **extra},
                         server=server.endpoint, val_batches=val)
            callbacks.append(cb)
        runners[name] = (lambda net=net, opt=opt, cb=cb: step(net, opt, xb, yb, cb))
    try:
        for run in runners.values():  # warm-up (the tangent starts at zero: no HVP on step 1)
            for _ in range(3):
                run()
        per_step = {k: [] for k in runners}
        names = list(runners)
        for b in range(args.blocks):
            for name in (names if b % 2 == 0 else names[::-1]):
                t0 = time.perf_counter()
                for _ in range(args.block_steps):
                    runners[name]()
                per_step[name].append((time.perf_counter() - t0) / args.block_steps)
    finally:
        for cb in callbacks:
            cb.close()
    plain = statistics.median(per_step["plain"])
    out = {name: {"step_s": statistics.median(v), "ratio": statistics.median(v) / plain} for name, v in per_step.items()}
    out["blocks"], out["block_steps"] = args.blocks, args.block_steps
    return out


def round_trip_cost(server, args) -> dict:
    """What reporting every step costs: a tiny MLP (a ~1 ms step, so the server round trip
    shows), plain vs hd reporting every 10 and every step, interleaved blocks."""
    g = torch.Generator().manual_seed(args.seed)
    xb, yb = torch.randn(64, 64, generator=g), torch.randint(0, 10, (64,), generator=g)
    runners, callbacks = {}, []
    for name, every in (("plain", None), ("hd every 10", 10), ("hd every 1", 1)):
        torch.manual_seed(args.seed)
        net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        cb = None
        if every is not None:
            cb = AutoLRS(net, opt, tuner="hd", config={"beta": 0.0, "every": every}, server=server.endpoint)
            callbacks.append(cb)
        runners[name] = (lambda net=net, opt=opt, cb=cb: step(net, opt, xb, yb, cb))
    per_step = {k: [] for k in runners}
    try:
        names = list(runners)
        for b in range(args.blocks):
            for name in (names if b % 2 == 0 else names[::-1]):
                t0 = time.perf_counter()
                for _ in range(40):
                    runners[name]()
                per_step[name].append((time.perf_counter() - t0) / 40)
    finally:
        for cb in callbacks:
            cb.close()
    plain = statistics.median(per_step["plain"])
    return {name: {"step_s": statistics.median(v), "extra_ms": (statistics.median(v) - plain) * 1e3}
            for name, v in per_step.items()}


def plot(path: Path, runs: list[dict], starts: list[float], good_lr: float) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(starts), figsize=(6 * len(starts), 4), sharey=True)
    for ax, lr0 in zip(axes, starts):
        for row in runs:
            if row["start_lr"] == lr0:
                ax.plot(row["lrs"], label=f"{row['tuner']} (test acc {row['test_accuracy']:.3f})")
        ax.axhline(good_lr, color="grey", ls=":", lw=1, label=f"good LR {good_lr:g}")
        ax.set_yscale("log")
        ax.set_xlabel("optimizer step")
        ax.set_title(f"SGD from LR {lr0:g}")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("learning rate")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--good-lr", type=float, default=0.05)
    p.add_argument("--every", type=int, default=10, help="steps per report (hyper step cadence)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--width", type=int, default=8, help="small_cnn width (16 is the example's)")
    p.add_argument("--blocks", type=int, default=6)
    p.add_argument("--block-steps", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tuners", default=",".join(TUNERS))
    p.add_argument("--data-dir", default=DEFAULT_DATA)
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "hypergradient.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    train_x, train_y, test_x, test_y = load_cifar10(Path(args.data_dir))
    n_val = 1000  # held out of the training set: the validation gradient never sees the test set
    data = (train_x[:-n_val], train_y[:-n_val], train_x[-n_val:], train_y[-n_val:], test_x, test_y)
    starts = [args.good_lr / 10, args.good_lr * 10]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, ServerProcess(Path(tmp) / "state", lifeline=True) as server:
        round_trip = round_trip_cost(server, args)
        for name, c in round_trip.items():
            print(f"{'tiny MLP, ' + name:>26}: {c['step_s'] * 1e3:7.3f} ms/step  (+{c['extra_ms']:.3f} ms)", flush=True)
        costs = step_costs(server, data, args)
        for name, c in costs.items():
            if isinstance(c, dict):
                print(f"{name:>26}: {c['step_s'] * 1e3:7.1f} ms/step  ratio {c['ratio']:.2f}", flush=True)
        runs = [train(server, tuner, TUNERS[tuner], lr0, data, args)
                for lr0 in starts for tuner in args.tuners.split(",")]
    print(f"\n{'start LR':>9} " + " ".join(f"{t:>18}" for t in args.tuners.split(",")))
    for lr0 in starts:
        cells = [f"{r['test_accuracy']:.3f} (LR {r['final_lr']:.3g})" for r in runs if r["start_lr"] == lr0]
        print(f"{lr0:>9g} " + " ".join(f"{c:>18}" for c in cells))
    result = {"args": vars(args), "starts": starts, "round_trip": round_trip, "step_costs": costs, "runs": runs,
              "torch": torch.__version__, "threads": torch.get_num_threads()}
    write_report(out, result)
    plot(out.with_suffix(".png"), runs, starts, args.good_lr)
    print(f"wrote {out.with_suffix('.png')}")
    return result


if __name__ == "__main__":
    main()
