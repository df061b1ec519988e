"""CIFAR-10 from the standard python-batch files, with augmentation done on tensors.

No torchvision needed to read or augment: the files are pickles of uint8 arrays. When the
folder holds no data, torchvision (where it imports and works) downloads the official set;
otherwise the error says where the data was looked for and how to provide it.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch

MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
STD = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]


def resolve_data_dir(cli_value: str | None) -> Path:
    """``--data-dir``, else ``$CIFAR10_DIR``, else ``./data``."""
    return Path(cli_value or os.environ.get("CIFAR10_DIR") or "data")


def _batch_folder(root: Path) -> Path | None:
    for candidate in (root, root / "cifar-10-batches-py"):
        if (candidate / "data_batch_1").is_file() and (candidate / "test_batch").is_file():
            return candidate
    return None


def data_problem(root: Path) -> str | None:
    """None when ``root`` holds the data or torchvision can download it there; else why not, in
    one line (run.sh checks this before it starts a server)."""
    if _batch_folder(root) is not None:
        return None
    try:
        _torchvision_cifar10()
    except Exception as exc:  # ImportError, or RuntimeError from a CUDA-only build
        return _no_data(root, exc)
    return None


def _torchvision_cifar10():
    import torchvision  # noqa: F401  (may fail with RuntimeError on a mismatched build)
    from torchvision.datasets import CIFAR10

    return CIFAR10


def _no_data(root: Path, exc: Exception) -> str:
    return (f"no CIFAR-10 python batches in {root} (nor {root / 'cifar-10-batches-py'}) and torchvision cannot "
            f"download them here ({type(exc).__name__}: {exc}). Put the files data_batch_1..5 and test_batch "
            "there, or pass --data-dir / set CIFAR10_DIR.")


def _download(root: Path) -> None:
    try:
        cifar10 = _torchvision_cifar10()
    except Exception as exc:  # ImportError, or RuntimeError from a CUDA-only build
        raise FileNotFoundError(_no_data(root, exc)) from None
    cifar10(str(root), train=True, download=True)


def _read(folder: Path, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for name in names:
        path = folder / name
        if not path.is_file():
            continue
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="latin1")
        images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch["labels"], dtype=np.int64))
    if not images:
        raise FileNotFoundError(f"none of {names} found in {folder}")
    return np.concatenate(images), np.concatenate(labels)


def load_cifar10(root: Path, download: bool = True):
    """(train_x, train_y, test_x, test_y) as uint8 NCHW tensors and int64 labels."""
    folder = _batch_folder(root)
    if folder is None:
        if not download:
            raise FileNotFoundError(f"no CIFAR-10 python batches in {root}")
        _download(root)
        folder = _batch_folder(root)
        if folder is None:
            raise FileNotFoundError(f"download finished but no batches found under {root}")
    train_x, train_y = _read(folder, TRAIN_FILES)
    test_x, test_y = _read(folder, ["test_batch"])
    return (torch.from_numpy(train_x), torch.from_numpy(train_y),
            torch.from_numpy(test_x), torch.from_numpy(test_y))


def normalize(x_uint8: torch.Tensor) -> torch.Tensor:
    return (x_uint8.float().div_(255) - MEAN.to(x_uint8.device)) / STD.to(x_uint8.device)


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop of 32 from the 4-pixel zero-padded image, and a random horizontal flip."""
    n = x.shape[0]
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    dx = torch.randint(0, 9, (n,), generator=generator)
    dy = torch.randint(0, 9, (n,), generator=generator)
    rows = (dy.view(n, 1) + torch.arange(32)).view(n, 1, 32, 1).expand(n, 3, 32, 32)
    cols = (dx.view(n, 1) + torch.arange(32)).view(n, 1, 1, 32).expand(n, 3, 32, 32)
    out = padded[torch.arange(n).view(n, 1, 1, 1), torch.arange(3).view(1, 3, 1, 1), rows, cols]
    flip = torch.rand(n, generator=generator) < 0.5
    out[flip] = out[flip].flip(3)
    return out


class Batches:
    """Shuffled mini-batches of a tensor dataset, forever; augmentation optional.

    ``sampler`` (a DistributedSampler over ``range(len(x))``) picks and orders each epoch's
    rows instead of the shuffle: this rank's share under DDP.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int,
                 train: bool, device: torch.device, sampler=None):
        self.x, self.y, self.batch_size, self.train, self.device = x, y, batch_size, train, device
        self.generator = torch.Generator().manual_seed(seed)
        self.sampler, self._epochs = sampler, 0

    def __len__(self) -> int:
        n = len(self.x) if self.sampler is None else len(self.sampler)
        return (n + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        """One epoch (so a Batches can be the callback's ``val_batches``, restarted when done)."""
        return self.epoch()

    def epoch(self):
        if self.sampler is not None:
            self.sampler.set_epoch(self._epochs)
            self._epochs += 1
            order = torch.tensor(list(self.sampler), dtype=torch.int64)
        elif self.train:
            order = torch.randperm(len(self.x), generator=self.generator)
        else:
            order = torch.arange(len(self.x))
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            xb = self.x[idx]
            if self.train:
                xb = augment(xb, self.generator)
            yield normalize(xb.to(self.device, non_blocking=True)), self.y[idx].to(self.device, non_blocking=True)


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: Batches) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over ``batches`` (model left in the mode it was in)."""
    was_training = model.training
    model.eval()
    total_loss = torch.zeros((), device=batches.device)
    correct = torch.zeros((), device=batches.device, dtype=torch.long)
    for xb, yb in batches.epoch():
        logits = model(xb)
        total_loss += torch.nn.functional.cross_entropy(logits, yb, reduction="sum")
        correct += (logits.argmax(1) == yb).sum()
    model.train(was_training)
    n = len(batches.x)
    return total_loss.item() / n, correct.item() / n
