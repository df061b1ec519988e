"""LR range test through the server (``LRFinder`` + ``range_test`` tuner) against the same sweep
as a plain in-process loop (torch-lr-finder's algorithm written out), same model, same batches.

    python bench/range_test.py [--data cifar|digits] [--num-iter 100] [--repeats 3]

The plain loop does what torch-lr-finder does: snapshot, per step set the LR of the exp formula,
train, ``loss.item()``, smooth, check divergence, then restore. Both runs start from the same
weights and see the same pre-built batches, so their curves must agree bit for bit. Prints the
median wall time of each, their ratio (server / plain; target < 1.05), the ratio of the best
times (steadier on a shared machine; the order of the two alternates per repeat), the suggestions,
and writes ``bench/out/range_test.json``. The server is started once, before any timing.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchlib import write_report

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

from autolrs import lr_curve  # noqa: E402
from autolrs.callbacks import LRFinder  # noqa: E402
from autolrs.server import ServerProcess  # noqa: E402
from autolrs.testing.training import torch_lr_finder_loop  # noqa: E402

CIFAR_DIR = Path("/work/shared/data/cifar-10-subset-py")


def make_data(kind: str, num_batches: int, batch_size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    if kind == "cifar":
        from cifar_data import load_cifar10, normalize
        from cifar_models import small_cnn

        x, y, _, _ = load_cifar10(CIFAR_DIR, download=False)
        idx = torch.randint(0, len(x), (num_batches, batch_size), generator=g)
        batches = [(normalize(x[i]), y[i]) for i in idx]
        return batches, lambda: (torch.manual_seed(seed), small_cnn())[1], 1e-5
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16
    y = torch.tensor(d.target, dtype=torch.int64)
    idx = torch.randint(0, len(x), (num_batches, batch_size), generator=g)
    batches = [(x[i], y[i]) for i in idx]

    def model():
        torch.manual_seed(seed)
        return torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    return batches, model, 1e-5


def plain_range_test(model, optimizer, batches, end_lr, num_iter):
    """torch-lr-finder's loop, in process, then model and optimizer restored as it does."""
    state = copy.deepcopy({"model": model.state_dict(), "optimizer": optimizer.state_dict()})
    history = torch_lr_finder_loop(model, optimizer, torch.nn.functional.cross_entropy, batches, end_lr, num_iter)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=("cifar", "digits"), default="cifar")
    parser.add_argument("--num-iter", type=int, default=100)
    parser.add_argument("--end-lr", type=float, default=10.0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "range_test.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    batches, make_model, start_lr = make_data(args.data, args.num_iter, args.batch_size)
    plain_times, server_times = [], []
    plain_hist = server_hist = finder = None
    state_dir = tempfile.TemporaryDirectory(prefix="autolrs-bench-")
    server = ServerProcess(state_dir.name, port=0, lifeline=True)
    try:
        for rep in range(args.repeats):
            # Alternate which goes first, so a slow phase of a shared machine hits both alike.
            for which in (("plain", "server") if rep % 2 == 0 else ("server", "plain")):
                model = make_model()
                opt = torch.optim.SGD(model.parameters(), lr=start_lr, momentum=0.9)
                if which == "plain":
                    t = time.perf_counter()
                    plain_hist = plain_range_test(model, opt, batches, args.end_lr, args.num_iter)
                    plain_times.append(time.perf_counter() - t)
                    continue
                finder = LRFinder(model, opt, torch.nn.functional.cross_entropy, server=server.endpoint,
                                  job=f"bench-range-test-{rep}")
                t = time.perf_counter()
                finder.range_test(batches, end_lr=args.end_lr, num_iter=args.num_iter, chunk=args.chunk)
                server_times.append(time.perf_counter() - t)
                server_hist = finder.history
                finder.close()
    finally:
        server.close()
        state_dir.cleanup()

    plain, served = statistics.median(plain_times), statistics.median(server_times)
    best_ratio = min(server_times) / min(plain_times)
    same = plain_hist["lr"] == server_hist["lr"] and plain_hist["loss"] == server_hist["loss"]
    suggestions = {m: lr_curve.suggest(server_hist["lr"], server_hist["loss"], m)["lr"] for m in lr_curve.METHODS}
    plain_suggestions = {m: lr_curve.suggest(plain_hist["lr"], plain_hist["loss"], m)["lr"]
                         for m in lr_curve.METHODS}
    try:
        bounds = lr_curve.bounds_from_curve(server_hist["lr"], server_hist["loss"])
    except ValueError as exc:
        bounds = str(exc)
    result = {
        "data": args.data, "num_iter": args.num_iter, "end_lr": args.end_lr, "batch_size": args.batch_size,
        "chunk": args.chunk, "threads": args.threads, "repeats": args.repeats,
        "plain_s": plain_times, "server_s": server_times, "plain_median_s": plain, "server_median_s": served,
        "ratio": served / plain, "ratio_of_best": best_ratio, "points": len(server_hist["lr"]), "ended": finder.summary.get("done"),
        "curves_identical": same, "suggestions": suggestions, "plain_suggestions": plain_suggestions,
        "bounds_from_curve": bounds,
    }
    print(f"range test, {args.data}, {args.num_iter} iterations (chunk {args.chunk}), median of {args.repeats}: "
          f"plain {plain:.3f} s, through the server {served:.3f} s, ratio {served / plain:.3f} (target < 1.05); "
          f"best of each: {min(plain_times):.3f} s vs {min(server_times):.3f} s, ratio {best_ratio:.3f}")
    print(f"points {result['points']} ({result['ended']}), curves identical: {same}")
    print("suggested LRs: " + ", ".join(f"{m} {v:.3g}" if v else f"{m} None" for m, v in suggestions.items())
          + f"; autolrs bounds {bounds}")
    write_report(args.out, result)


if __name__ == "__main__":
    main()
