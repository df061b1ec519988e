"""The callback on a CUDA device: what ``cb.step`` costs, whether it syncs the host, and what
snapshots and restores cost in each checkpoint placement.

On a ResNet-18 (examples/cifar_models.py) training on CIFAR-10 batches (the python-batch files
of ``--data-dir``; random images of the same shape with ``--synthetic`` or when none are found)
with SGD and momentum, batch ``--batch-size``, on ``cuda:0``:

1. **Step cost.** Host time of ``cb.step(loss)`` per call, and wall time per training step
   (the device synchronised at both ends of each block of steps) without the callback and with
   it, in schedule mode (the ``cosine`` tuner: a plan of many steps, nothing but LRs to set)
   and AutoLRS mode (the ``autolrs`` tuner with short stages: checkpoints, restores and
   evaluations at trial boundaries). The server is a real one in a child process.
   ``cb.step``'s host time leaves out the evaluations it runs (``val_fn``: the user's cost,
   reported apart).
2. **Host syncs.** Every ``cb.step`` call runs under ``torch.cuda.set_sync_debug_mode("warn")``,
   each warning counted: per step in schedule mode, and in AutoLRS mode split between steps
   where nothing but the LR changes and steps at a segment's end (snapshots, restores, the
   report). ``val_fn`` (the user's evaluation, which reads a loss back) runs with the mode off.
3. **Snapshot and restore per trial**, for ``checkpoint="memory"``, ``"cpu"`` and ``"disk"``:
   the time of one ``save`` and one ``restore`` of the model and optimizer (device synchronised
   after each), and the device memory a snapshot holds.

Without CUDA it prints why and exits 0, writing ``{"skipped": reason}``.

    python bench/gpu.py [--steps 200] [--batch-size 128] [--data-dir DIR] [--synthetic]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from benchlib import write_report

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
from cifar_data import load_cifar10, normalize  # noqa: E402
from cifar_models import resnet18  # noqa: E402

DEFAULT_DATA = "/work/shared/data/cifar-10-subset-py"
PLACEMENTS = ("memory", "cpu", "disk")
#: AutoLRS with short stages, so a run of a few hundred steps crosses many trial boundaries.
AUTOLRS_CONFIG = {"tau": 20, "tau_max": 40, "k": 3, "trial_fraction": 0.25}


def batches(args: argparse.Namespace, device: torch.device):
    """An endless iterator of (x, y) on ``device``, and where they came from."""
    data_dir = Path(args.data_dir or os.environ.get("CIFAR10_DIR") or DEFAULT_DATA)
    x = y = None
    source = "synthetic"
    if not args.synthetic:
        try:
            x, y, _, _ = load_cifar10(data_dir, download=False)
            source = str(data_dir)
        except FileNotFoundError:
            print(f"no CIFAR-10 batches in {data_dir}: random images instead", flush=True)
    if x is None:
        gen = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (4096, 3, 32, 32), dtype=torch.uint8, generator=gen)
        y = torch.randint(0, 10, (4096,), generator=gen)
    x = normalize(x.to(device))
    y = y.to(device)
    gen = torch.Generator(device="cpu").manual_seed(1)

    def forever():
        while True:
            order = torch.randperm(len(x), generator=gen).to(device)
            for start in range(0, len(order) - args.batch_size + 1, args.batch_size):
                idx = order[start:start + args.batch_size]
                yield x[idx], y[idx]

    return forever(), source


def setup(device: torch.device):
    torch.manual_seed(0)
    model = resnet18().to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    return model, optimizer


def train_step(model, optimizer, xb, yb) -> torch.Tensor:
    optimizer.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(xb), yb)
    loss.backward()
    optimizer.step()
    return loss.detach()


class SyncCounter:
    """Counts the host syncs the CUDA sync debug mode reports inside ``with counter:`` blocks."""

    def __init__(self):
        self.count = 0

    def __enter__(self):
        self._catch = warnings.catch_warnings(record=True)
        self._caught = self._catch.__enter__()
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc):
        torch.cuda.set_sync_debug_mode("default")
        self.count += sum("synchroniz" in str(w.message) for w in self._caught)
        self._catch.__exit__(*exc)


class UserEvaluation:
    """``fn`` (the user's ``val_fn``) with the sync debug mode off while it runs (an evaluation
    reads a loss back: a sync of the user's, not the callback's), and its time counted apart."""

    def __init__(self, fn):
        self.fn, self.seconds, self.calls = fn, 0.0, 0

    def __call__(self):
        mode = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("default")
        t = time.perf_counter()
        try:
            return self.fn()
        finally:
            self.seconds += time.perf_counter() - t
            self.calls += 1
            torch.cuda.set_sync_debug_mode(mode)


def timed_block(step, steps: int) -> float:
    """Wall seconds per step of ``steps`` calls of ``step()``, the device synchronised at both ends."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def baseline(args, device, data) -> float:
    model, optimizer = setup(device)
    for _ in range(10):  # cuDNN autotuning, allocator warm-up
        train_step(model, optimizer, *next(data))
    return timed_block(lambda: train_step(model, optimizer, *next(data)), args.steps)


def with_callback(args, device, data, endpoint: str, tuner: str, config: dict) -> dict:
    """Train ``args.steps`` steps under the callback; host time per ``cb.step``, wall time per
    step, and the syncs counted inside ``cb.step``, split by what the step carried out."""
    from autolrs.callbacks import AutoLRS

    model, optimizer = setup(device)
    val_x, val_y = next(data)

    @torch.no_grad()
    def val_fn():
        model.eval()
        loss = torch.nn.functional.cross_entropy(model(val_x), val_y).item()
        model.train()
        return loss

    host_times: list[float] = []
    plain_syncs, boundary_syncs, plain_steps, boundary_steps = 0, 0, 0, 0
    evaluation = UserEvaluation(val_fn)
    with AutoLRS(model, optimizer, tuner=tuner, config=config, server=endpoint, val_fn=evaluation,
                 max_steps=10 * args.steps, timeout=30.0) as cb:
        for _ in range(10):  # warm-up outside the counts (lazy CUDA initialisation syncs)
            cb.step(train_step(model, optimizer, *next(data)))
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            loss = train_step(model, optimizer, *next(data))
            reports, restores = cb.reports, len(cb.discarded)
            counter = SyncCounter()
            with counter:
                t, evaluating = time.perf_counter(), evaluation.seconds
                cb.step(loss)
                # The callback's own host time: the user's evaluations it ran are not its cost.
                host_times.append(time.perf_counter() - t - (evaluation.seconds - evaluating))
            if cb.reports != reports or len(cb.discarded) != restores:
                boundary_syncs += counter.count
                boundary_steps += 1
            else:
                plain_syncs += counter.count
                plain_steps += 1
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) / args.steps
    ms = 1000.0
    return {"tuner": tuner, "steps": args.steps, "wall_ms_per_step": wall * ms,
            "cb_step_host_median_ms": statistics.median(host_times) * ms,
            "cb_step_host_p99_ms": sorted(host_times)[int(0.99 * (len(host_times) - 1))] * ms,
            "plain_steps": plain_steps, "syncs_per_plain_step": plain_syncs / max(1, plain_steps),
            "boundary_steps": boundary_steps, "syncs_at_boundaries": boundary_syncs,
            "reports": cb.reports, "restores": len(cb.discarded), "evaluations": evaluation.calls,
            "evaluation_ms": evaluation.seconds * ms}


def placements(args, device, data) -> list[dict]:
    """Time of one snapshot and one restore per placement; device memory a snapshot holds."""
    from autolrs.callbacks.state import CheckpointStore

    model, optimizer = setup(device)
    for _ in range(3):  # momentum buffers exist
        train_step(model, optimizer, *next(data))
    rows = []
    with tempfile.TemporaryDirectory(prefix="autolrs-gpu-bench-") as tmp:
        for placement in PLACEMENTS:
            store = CheckpointStore(model, optimizer, storage=placement, directory=tmp)
            saves, restores = [], []
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated(device)
            held = 0
            for _ in range(args.repeats):
                torch.cuda.synchronize()
                t = time.perf_counter()
                store.save("trial")
                torch.cuda.synchronize()
                saves.append(time.perf_counter() - t)
                held = torch.cuda.memory_allocated(device) - before
                train_step(model, optimizer, *next(data))
                torch.cuda.synchronize()
                t = time.perf_counter()
                store.restore("trial")
                torch.cuda.synchronize()
                restores.append(time.perf_counter() - t)
            store.close()
            rows.append({"placement": placement, "save_median_ms": statistics.median(saves) * 1000,
                         "restore_median_ms": statistics.median(restores) * 1000,
                         "snapshot_device_mb": held / 2**20, "repeats": args.repeats})
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=200, help="training steps per measured run")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=10, help="snapshots and restores timed per placement")
    p.add_argument("--data-dir", default=None, help=f"CIFAR-10 python batches (default $CIFAR10_DIR, else {DEFAULT_DATA})")
    p.add_argument("--synthetic", action="store_true", help="random images instead of CIFAR-10")
    p.add_argument("--out", default="bench/out/gpu.json")
    args = p.parse_args()

    if not torch.cuda.is_available():
        reason = "no CUDA device (torch.cuda.is_available() is False)"
        print(f"bench/gpu.py skipped: {reason}")
        write_report(args.out, {"benchmark": "gpu", "skipped": reason})
        return 0

    from autolrs.server import ServerProcess

    device = torch.device("cuda:0")
    torch.backends.cudnn.benchmark = True
    data, source = batches(args, device)
    print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, ResNet-18, batch {args.batch_size}, "
          f"data {source}", flush=True)
    report: dict = {"benchmark": "gpu", "device": torch.cuda.get_device_name(device), "torch": torch.__version__,
                    "batch_size": args.batch_size, "data": source}
    report["baseline_ms_per_step"] = baseline(args, device, data) * 1000
    print(f"no callback: {report['baseline_ms_per_step']:.2f} ms per step", flush=True)
    runs = []
    with ServerProcess(lifeline=True) as server:
        for tuner, config in (("cosine", {"T_0": 10 * args.steps}), ("autolrs", AUTOLRS_CONFIG)):
            r = with_callback(args, device, data, server.endpoint, tuner, config)
            r["overhead_ms_per_step"] = r["wall_ms_per_step"] - report["baseline_ms_per_step"]
            runs.append(r)
            print(f"{tuner:>8}: {r['wall_ms_per_step']:.2f} ms per step ({r['overhead_ms_per_step']:+.2f}), "
                  f"cb.step host median {r['cb_step_host_median_ms']:.3f} ms, p99 {r['cb_step_host_p99_ms']:.3f} ms; "
                  f"syncs per plain step {r['syncs_per_plain_step']:.2f} ({r['plain_steps']} steps), "
                  f"{r['syncs_at_boundaries']} at {r['boundary_steps']} segment ends "
                  f"({r['reports']} reports, {r['restores']} restores)", flush=True)
    report["callback"] = runs
    report["placements"] = placements(args, device, data)
    print(f"{'placement':>9} {'save ms':>8} {'restore ms':>11} {'snapshot on device MB':>22}")
    for row in report["placements"]:
        print(f"{row['placement']:>9} {row['save_median_ms']:>8.2f} {row['restore_median_ms']:>11.2f} "
              f"{row['snapshot_device_mb']:>22.1f}")
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
