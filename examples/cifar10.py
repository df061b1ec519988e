"""Train a CIFAR-10 classifier with its learning rate driven by an autolrs server.

    python -m autolrs.server &                       # or: bash run.sh, which does all of this
    python examples/cifar10.py --tuner autolrs --server tcp://127.0.0.1:5555 --out runs/demo

The training loop is an ordinary PyTorch loop; the tuner adds three lines: build the callback,
``cb.step(loss)`` after ``optimizer.step()``, ``cb.close()`` (here via ``with``). ``--tuner none``
trains at a fixed ``--lr`` with no server, as a baseline.

Outputs in ``--out``: ``summary.json`` (test accuracy and loss, steps, wall time, the LR and
loss of every step, the tuner's account of the job as the server reported it, the steps a
restore threw away) and ``curves.png`` (LR and training loss against steps, search that was
undone shaded, restores dashed); the run ends by printing the tuner's account; with ``--tuner range_test`` also
``range_test.png`` (loss against LR with the suggested LR marked); with ``--tuner loss_diff``
``loss_diff.png`` (mean one-step loss change against LR with its t interval): its probing steps
are undone and training goes on at the LR it picked.

``--nproc N`` trains data-parallel on N ranks (torchrun; gloo on CPU, NCCL with a GPU per rank):
``--batch-size`` is per rank, the callback is unchanged, rank 0 writes the outputs (see cifar_ddp.py).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cifar_ddp  # noqa: E402
from cifar_data import Batches, evaluate, load_cifar10, resolve_data_dir  # noqa: E402
from cifar_models import MODELS, default_model  # noqa: E402

# What each tuner gets unless --tuner-config says otherwise: sized for this example's budget.
EXAMPLE_TUNER_DEFAULTS = {
    "autolrs": {"lr_min": 1e-3, "lr_max": 1.0},
    "loss_diff": {"lr_min": 1e-4, "lr_max": 3.0, "num_evals": 20, "num_subsamples": 20, "apply_best": True},
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tuner", default="auto",
                   help="a tuner registered on the server (default auto, the recommended one; autolrs, constant, "
                        "step, exponential, cosine, hd, rtho, marthe, ...), "
                        "'alrao' (random per-unit LRs in [--lr-min, --lr-max], no server) "
                        "or 'none' for a fixed --lr without a server")
    p.add_argument("--tuner-config", default=None,
                   help="tuner knobs as JSON/YAML text (e.g. '{tau: 200, k: 5}') or a path to a YAML file")
    p.add_argument("--lr", type=float, default=0.05, help="initial LR (the fixed LR with --tuner none)")
    p.add_argument("--lr-min", type=float_or_auto, default=1e-5,
                   help="--tuner alrao: lower end of the LR interval ('auto': from a range test on the server)")
    p.add_argument("--lr-max", type=float_or_auto, default=10.0,
                   help="--tuner alrao: upper end of the LR interval ('auto': from a range test on the server)")
    p.add_argument("--record", action="store_true",
                   help="--tuner alrao: log the run on the server (tuner 'record'); implied by an 'auto' bound")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--model", choices=sorted(MODELS), default=None,
                   help="default: small_cnn on CPU, resnet18 on GPU")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=float, default=None, help="training epochs (default 30)")
    budget.add_argument("--max-steps", type=int, default=None, help="optimizer steps (overrides --epochs)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of the training set held out for val_fn")
    p.add_argument("--data-dir", default=None, help="CIFAR-10 python batches (default: $CIFAR10_DIR, else ./data)")
    p.add_argument("--out", default="runs/cifar10", help="folder for summary.json and curves.png")
    p.add_argument("--server", default="tcp://127.0.0.1:5555")
    p.add_argument("--job", default=None, help="job id on the server (default: generated)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--nproc", type=int, default=1,
                   help="data-parallel processes (torchrun; gloo on CPU, NCCL on CUDA); --batch-size is per process")
    p.add_argument("--eval-every", type=int, default=None, metavar="N",
                   help="evaluate on the test set every N optimizer steps (and at step 0) and record "
                        "[[step, test_accuracy, test_loss], ...] as summary.json's test_curve")
    return p.parse_args(argv)


def float_or_auto(text: str) -> float | str:
    return "auto" if text == "auto" else float(text)


def alrao_interval(args: argparse.Namespace, batches: Batches, model_name: str, device) -> tuple[float, float, str]:
    """(lr_min, lr_max, how they were chosen): the flags, or a range test for 'auto' ones."""
    if "auto" not in (args.lr_min, args.lr_max):
        return args.lr_min, args.lr_max, "given"
    from alrao_cifar import interval_from_range_test
    lo, hi = interval_from_range_test(model_name, batches, args.server, seed=args.seed, device=device)
    lo = lo if args.lr_min == "auto" else args.lr_min
    hi = hi if args.lr_max == "auto" else args.lr_max
    if not lo < hi:
        raise SystemExit(f"the range test's bound does not fit the given one: [{lo:g}, {hi:g}]")
    print(f"alrao interval from a range test: [{lo:.3g}, {hi:.3g}]")
    return lo, hi, "range test"


def tuner_config(args: argparse.Namespace) -> dict:
    config = dict(EXAMPLE_TUNER_DEFAULTS.get(args.tuner, {}))
    if args.tuner_config:
        path = Path(args.tuner_config)
        text = path.read_text() if path.is_file() else args.tuner_config
        extra = yaml.safe_load(text) or {}
        if not isinstance(extra, dict):
            raise SystemExit(f"--tuner-config must be a mapping, got {extra!r}")
        config.update(extra)
    return config


def split_validation(x, y, fraction: float, seed: int):
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed + 1))
    n_val = max(1, int(len(x) * fraction))
    val, train = order[:n_val], order[n_val:]
    return x[train], y[train], x[val], y[val]


def plot_curves(path: Path, lrs: list[float], losses: list[float], title: str,
                discarded: list[list[int]] = ()) -> None:
    """LR (log scale) and training loss against the step. Steps a restore threw away (search
    trials, range tests, rollbacks: the callback's ``discarded`` windows) are shaded, and each
    restore is a dashed line where training went back to the checkpoint's weights."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_lr, ax_loss) = plt.subplots(2, 1, sharex=True, figsize=(9, 6))
    steps = range(1, len(lrs) + 1)
    ax_lr.plot(steps, lrs, lw=0.8)
    ax_lr.set_yscale("log")
    ax_lr.set_ylabel("learning rate")
    ax_loss.plot(steps, losses, lw=0.5, alpha=0.6)
    finite = [v for v in losses if math.isfinite(v)]
    if finite:
        ax_loss.set_ylim(0, min(max(finite), 3 * sorted(finite)[len(finite) // 2]))
    for i, (saved, restored) in enumerate(discarded):
        for ax in (ax_lr, ax_loss):
            ax.axvspan(saved, restored, color="tab:orange", alpha=0.15, lw=0,
                       label="search, undone by a restore" if i == 0 and ax is ax_lr else None)
            ax.axvline(restored, color="tab:orange", lw=0.6, ls="--")
    if discarded:
        ax_lr.legend(loc="lower left", fontsize=8)
    ax_loss.set_ylabel("training loss")
    ax_loss.set_xlabel("optimizer step")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def tuner_account(tuner: str, summary: dict | None, steps: int) -> list[str]:
    """What the tuner decided and what it cost, in a few lines (from the job's summary)."""
    if not summary:
        return [f"{tuner}: no summary from the server (it was unreachable at the end)"]
    lines = []
    search = summary.get("search_steps")
    if search is not None:
        lines.append(f"{tuner}: {search} of {steps} steps searching ({100 * search / max(1, steps):.0f}%), "
                     f"the rest training")
    if tuner == "auto":
        sweep = summary.get("sweep") or {}
        lines.append(f"  range test: centre {sweep.get('centre', float('nan')):.3g} from {sweep.get('source')}")
        lines.append("  annealed trials (LR: score): " + ", ".join(f"{lr:.3g}: {score:.4f}"
                                                                   for lr, score in summary.get("trials", [])))
        lines.append(f"  peak LR {summary.get('peak', float('nan')):.3g}, warm-up then cosine to 0; "
                     f"{summary.get('cuts', 0)} rollback(s)")
        for event in summary.get("events", []):
            lines.append(f"  step {event['step']}: {event['action']} ({event['reason']})")
    elif tuner == "autolrs":
        stage = summary.get("last_stage")
        if stage:
            tried = ", ".join(f"{t['lr']:.3g}: {t['forecast']:.4f}" for t in stage["trials"])
            lines.append(f"  last stage {stage['stage']}: winner {stage['winner']:.3g}; trials (LR: forecast) {tried}")
    elif summary.get("suggested_lr") is not None:
        lines.append(f"  suggested LR ({summary.get('method')}): {summary['suggested_lr']:.3g}")
    elif summary.get("best_lr") is not None:
        lines.append(f"  best LR ({summary.get('method')}): {summary['best_lr']:.3g}")
    return lines


def plot_range_test(path: Path, summary: dict | None) -> None:
    """The range test's loss-versus-LR curve, as the server recorded it, with its suggestion."""
    history = (summary or {}).get("history") or {}
    if len(history.get("lr", [])) < 2:
        print("range test: the server returned no curve to plot", file=sys.stderr)
        return
    from autolrs import lr_curve
    from autolrs.callbacks.lr_finder import plot_curve

    method = summary.get("method") or lr_curve.DEFAULT_METHOD
    try:  # the suggestion is the tuner's: on the bias-corrected curve of the raw losses
        _, lr, _ = plot_curve(history["lr"], history["smoothed"], method=method, path=str(path),
                              rule_losses=lr_curve.debiased(history["loss"]))
        print(f"range test: suggested LR ({method}) {lr:.3g} -> {path}")
    except RuntimeError as exc:  # too short a curve for a suggestion: plot it unmarked
        plot_curve(history["lr"], history["smoothed"], suggest_lr=False, path=str(path))
        print(f"range test: {exc} -> {path}")


def plot_loss_diff(path: Path, summary: dict | None) -> None:
    """The loss_diff tuner's mean one-step loss change per LR, with its t interval and choice."""
    summary = summary or {}
    if not summary.get("stats"):
        print("loss_diff: the server returned no statistics to plot", file=sys.stderr)
        return
    from autolrs.callbacks.loss_diff import plot_deltas

    plot_deltas(summary["lrs"], summary["stats"], log_lr=summary["spacing"] == "log", best=summary["best_lr"],
                method=summary["method"], alpha=summary["alpha"], path=str(path))
    print(f"loss_diff: best LR ({summary['method']}) {summary['best_lr']} -> {path}")


def main(argv=None) -> dict | None:
    args = parse_args(argv)
    if args.nproc < 1:
        raise SystemExit(f"--nproc must be >= 1, got {args.nproc}")
    if args.nproc > 1 and args.tuner in ("rtho", "marthe"):
        raise SystemExit(f"--tuner {args.tuner} needs a Hessian-vector product, which DDP does not reduce; drop --nproc")
    if args.nproc > 1 and args.tuner == "alrao":
        raise SystemExit("--tuner alrao runs in one process (its optimizer steps each classifier itself); drop --nproc")
    if args.nproc > 1 and not cifar_ddp.launched():  # start N ranks of this script under torchrun
        return cifar_ddp.relaunch(__file__, sys.argv[1:] if argv is None else list(argv), args.nproc, Path(args.out))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ranks = cifar_ddp.setup(args.device)
    device = ranks.device
    if not ranks.is_main:
        args.eval_every = None  # rank 0 records the test curve
    torch.manual_seed(args.seed)

    data_dir = resolve_data_dir(args.data_dir)
    train_x, train_y, test_x, test_y = load_cifar10(data_dir)
    train_x, train_y, val_x, val_y = split_validation(train_x, train_y, args.val_fraction, args.seed)
    train = Batches(train_x, train_y, args.batch_size, args.seed + ranks.rank, train=True, device=device,
                    sampler=ranks.sampler(len(train_x), args.seed))
    val = Batches(*ranks.shard(val_x, val_y), 500, args.seed, train=False, device=device)
    test = Batches(test_x, test_y, 500, args.seed, train=False, device=device)

    model_name = args.model or default_model(device)
    alrao = args.tuner == "alrao"
    if alrao:  # in-process (autolrs.optim): the model and the optimizer change, no server
        from alrao_cifar import alrao_train_step, build_alrao
        lr_min, lr_max, interval_source = alrao_interval(args, train, model_name, device)
        model, optimizer = build_alrao(model_name, lr_min, lr_max, seed=args.seed, device=device)
    else:
        model = MODELS[model_name]().to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                    weight_decay=args.weight_decay)
    total_steps = args.max_steps or math.ceil((args.epochs or 30) * len(train))
    train_model = ranks.wrap(model)  # DistributedDataParallel under --nproc; evaluation uses the bare model

    def val_fn() -> float:
        return evaluate(model, val)[0]

    def probe_fn() -> torch.Tensor:  # --tuner loss_diff: the loss of the loop's current batch
        return torch.nn.functional.cross_entropy(train_model(xb), yb)

    def tuner_done() -> bool:  # loss_diff stops after probing; training goes on at its LR
        return callback is not None and callback.should_stop and args.tuner != "loss_diff"

    callback = None
    if args.tuner not in ("none", "alrao"):
        from autolrs.callbacks import AutoLRS
        callback = AutoLRS(model, optimizer, tuner=args.tuner, config=tuner_config(args), server=args.server,
                           job=args.job, val_fn=val_fn, max_steps=total_steps, seed=args.seed,
                           val_batches=val if args.tuner in ("rtho", "marthe") else None,
                           probe_fn=probe_fn if args.tuner == "loss_diff" else None)
    elif alrao and (args.record or interval_source == "range test"):
        from autolrs.callbacks import AutoLRS  # the server logs the run; the LRs stay Alrao's
        callback = AutoLRS(model, optimizer, tuner="record", server=args.server, job=args.job,
                           config={"lr_min": lr_min, "lr_max": lr_max, "interval_source": interval_source},
                           max_steps=total_steps, seed=args.seed)

    if args.eval_every is not None and args.eval_every < 1:
        raise SystemExit(f"--eval-every must be >= 1, got {args.eval_every}")
    test_curve: list[list[float]] = []

    def record_test(at_step: int) -> None:
        # evaluate() runs under no_grad in eval mode and puts the model back in train mode. It
        # draws no random numbers, so the training run is the same with or without it.
        t_loss, t_acc = evaluate(model, test)
        test_curve.append([at_step, t_acc, t_loss])

    lrs: list[float] = []
    loss_tensors: list[torch.Tensor] = []
    started = time.time()
    if args.eval_every:
        record_test(0)
    model.train()
    bar = tqdm(total=total_steps, disable=args.no_progress or not ranks.is_main, desc=f"{args.tuner}/{model_name}", unit="step")
    try:
        step = 0
        while step < total_steps and not tuner_done():
            for xb, yb in train.epoch():
                lrs.append(float(optimizer.param_groups[0]["lr"]))
                if alrao:
                    loss = alrao_train_step(model, optimizer, xb, yb)
                else:
                    optimizer.zero_grad(set_to_none=True)
                    loss = torch.nn.functional.cross_entropy(train_model(xb), yb)
                    if callback:
                        callback.backward(loss)  # loss.backward(), plus H.Z for rtho/marthe
                    else:
                        loss.backward()
                    optimizer.step()
                loss_tensors.append(loss.detach())
                if callback:
                    callback.step(loss)
                step += 1
                bar.update(1)
                if args.eval_every and step % args.eval_every == 0:
                    record_test(step)
                if step % 25 == 0:
                    bar.set_postfix(lr=f"{lrs[-1]:.3g}", loss=f"{loss_tensors[-1].item():.3f}")
                if step >= total_steps or tuner_done():
                    break
        bar.close()
    finally:
        if callback:
            callback.close(timeout=5.0)  # the goodbye reply carries the tuner's account of the job
    tuner_summary = callback.summary if callback else None
    discarded = list(callback.discarded) if callback else []
    wall = time.time() - started
    ranks.close()
    if not ranks.is_main:
        return None

    losses = torch.stack(loss_tensors).float().cpu().tolist() if loss_tensors else []
    test_loss, test_acc = evaluate(model, test)
    if args.eval_every and (not test_curve or test_curve[-1][0] != len(lrs)):
        test_curve.append([len(lrs), test_acc, test_loss])
    val_loss, val_acc = evaluate(model, val)
    summary = {
        "tuner": args.tuner,
        "tuner_config": tuner_config(args) if callback and not alrao else
        ({"lr_min": lr_min, "lr_max": lr_max, "interval_source": interval_source,
          "posterior": model.posterior().tolist()} if alrao else None),
        "model": model_name, "device": str(device), "batch_size": args.batch_size, "nproc": ranks.world,
        "steps": len(lrs), "planned_steps": total_steps, "wall_time_s": round(wall, 2),
        "test_accuracy": test_acc, "test_loss": test_loss, "val_accuracy": val_acc, "val_loss": val_loss,
        "job": callback.job if callback else None, "tuner_summary": tuner_summary, "discarded": discarded,
        "lrs": lrs, "losses": losses,
    }
    if args.eval_every:
        summary["eval_every"] = args.eval_every
        summary["test_curve"] = test_curve
    (out / "summary.json").write_text(json.dumps(summary, default=float, indent=1) + "\n")
    plot_curves(out / "curves.png", lrs, losses, f"CIFAR-10 {model_name}, tuner {args.tuner}: "
                                                  f"test accuracy {test_acc:.3f}", discarded)
    if args.tuner == "range_test":
        plot_range_test(out / "range_test.png", tuner_summary)
    elif args.tuner == "loss_diff":
        plot_loss_diff(out / "loss_diff.png", tuner_summary)
    if callback and not alrao:
        print("\n".join(tuner_account(args.tuner, tuner_summary, len(lrs))))
    print(f"test accuracy {test_acc:.4f}  test loss {test_loss:.4f}  steps {len(lrs)}  "
          f"wall {wall:.1f}s  -> {out}/summary.json, {out}/curves.png")
    return summary


if __name__ == "__main__":
    main()
