"""Data-parallel training for the CIFAR-10 example: ``--nproc N`` runs N ranks under torchrun.

``python examples/cifar10.py --nproc 2 ...`` starts ``python -m torch.distributed.run
--standalone --nproc_per_node 2 examples/cifar10.py ...`` (the same arguments); each rank then
calls :func:`setup`, which joins the process group: NCCL with one GPU per rank when training on
CUDA, gloo on CPU. The model is wrapped in DistributedDataParallel, the training set is split
by a DistributedSampler (reshuffled every epoch, the same number of batches on every rank), and
the validation set by rank; the callback needs nothing: rank 0 talks to the server, the others
follow (see ``autolrs.callbacks.distributed``). Rank 0 writes the outputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist


def launched() -> bool:
    """Whether this process is a rank started by torchrun."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def relaunch(script: str, argv: list[str], nproc: int, out: Path) -> dict:
    """Run ``script argv`` as ``nproc`` ranks under torchrun; rank 0's summary.json."""
    # The ranks learn their number from torchrun; "--nproc" would also trip torchrun's own parser
    # (an ambiguous abbreviation of --nproc-per-node, even after the script).
    argv = [a for i, a in enumerate(argv) if not (a == "--nproc" or a.startswith("--nproc=")
                                                  or (i > 0 and argv[i - 1] == "--nproc"))]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "--monitor-interval", "0.1", str(script), *argv]
    rc = subprocess.call(cmd)
    if rc != 0:
        raise SystemExit(rc)
    return json.loads((out / "summary.json").read_text())


@dataclass
class Ranks:
    """This process's place in the job (rank 0 of 1 without torchrun)."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sampler(self, n: int, seed: int):
        """A DistributedSampler over ``range(n)``, or None in a single process."""
        if self.world == 1:
            return None
        from torch.utils.data import DistributedSampler
        return DistributedSampler(range(n), num_replicas=self.world, rank=self.rank, shuffle=True, seed=seed)

    def shard(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Every ``world``-th row from ``rank`` (evaluation data: the callback averages val_fn)."""
        return tensors if self.world == 1 else tuple(t[self.rank::self.world] for t in tensors)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` in DistributedDataParallel (the same model in a single process)."""
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel
        return DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def setup(device: str | None) -> Ranks:
    """Join the process group when launched by torchrun (NCCL on CUDA, gloo on CPU)."""
    want = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if not launched():
        return Ranks(device=want)
    local_rank = int(os.environ["LOCAL_RANK"])
    if want.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise SystemExit(f"rank {local_rank} has no GPU ({torch.cuda.device_count()} visible): use fewer "
                             "processes or --device cpu")
        want = torch.device("cuda", local_rank)
        torch.cuda.set_device(want)  # before any collective: NCCL and the callback use the current device
    dist.init_process_group("nccl" if want.type == "cuda" else "gloo")
    return Ranks(device=want, rank=dist.get_rank(), world=dist.get_world_size())
