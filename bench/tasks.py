"""The training tasks the tuner benchmarks share (``bench/quality.py``, ``bench/parity.py``).

Each task is a small, real problem on real data that trains in seconds on a CPU: a model, an
optimizer family, a data set split once (fixed) into train / validation / test, and a metric on
the test split. Seeds change the initial weights and the order of the batches, not the split.

| task | data | model | optimizer | metric |
|---|---|---|---|---|
| ``cifar_cnn`` | CIFAR-10 subset (5,170 / 1,017 images, averaged to 16x16) | the example's small CNN (width 8) | SGD m0.9 | accuracy |
| ``digits_mlp`` | scikit-learn digits | MLP 64-64-10 | SGD m0.9 | accuracy |
| ``digits_cnn`` | digits as 8x8 images | two-conv CNN | SGD m0.9 | accuracy |
| ``diabetes_mse`` | scikit-learn diabetes (regression) | MLP 10-64-64-1, MSE | SGD m0.9 | test MSE |
| ``digits_gru`` | digits, rows as a sequence | GRU(32) | Adam | accuracy |
| ``digits_attention`` | digits, rows as tokens | one transformer encoder layer | AdamW | accuracy |
| ``cancer_small`` | breast cancer, 332 training rows | MLP 30-64-64-2 | SGD m0.9 | test loss (overfits) |
| ``noisy_bn`` | 20 features, 5 classes, 10% flipped labels | BatchNorm MLP | SGD m0.9 | test loss (overfits) |

``cancer_small`` and ``noisy_bn`` overfit within their budgets: the LR that lowers the training
loss fastest is not the one with the best held-out loss, so they are judged on the test loss.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
SHARED_CIFAR = Path("/work/shared/data/cifar-10-subset-py")

SGD_GRID = (0.003, 0.01, 0.03, 0.1, 0.3)
ADAM_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)


@dataclass
class Split:
    """Tensors of one task: train, validation (for tuners' ``val_fn``) and test (the metric)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


@dataclass(frozen=True)
class Task:
    name: str
    load: Callable[[], Split] = field(repr=False)
    build: Callable[[], nn.Module] = field(repr=False)  # called after torch.manual_seed(seed)
    optimizer: str  # "sgd" (momentum 0.9), "adam" or "adamw"
    metric: str  # "accuracy" (higher is better) or "loss" (lower is better)
    loss: str  # "ce" or "mse"
    short_steps: int
    long_steps: int
    batch_size: int = 32
    weight_decay: float = 0.0
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = field(default=None, repr=False)

    @property
    def default_lr(self) -> float:
        """The LR a practitioner starts with: 0.1 for SGD with momentum, 1e-3 for Adam(W)."""
        return 0.1 if self.optimizer == "sgd" else 1e-3

    @property
    def grid(self) -> tuple[float, ...]:
        return SGD_GRID if self.optimizer == "sgd" else ADAM_GRID

    @property
    def higher_is_better(self) -> bool:
        return self.metric == "accuracy"

    def steps(self, budget: str) -> int:
        return {"short": self.short_steps, "long": self.long_steps}[budget]

    def make_optimizer(self, model: nn.Module, lr: float) -> torch.optim.Optimizer:
        if self.optimizer == "sgd":
            return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=self.weight_decay)
        if self.optimizer == "adam":
            return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=self.weight_decay)
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=self.weight_decay or 0.01)

    def criterion(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.loss == "mse":
            return nn.functional.mse_loss(out.squeeze(-1), y)
        return nn.functional.cross_entropy(out, y)

    def model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return self.build()

    def data(self) -> Split:
        return _cached_split(self.name)


# ------------------------------------------------------------------------------ evaluation


@torch.no_grad()
def evaluate(task: Task, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """``{"loss", "accuracy"}`` over a whole split (accuracy None for regression); a model
    whose outputs are not finite gets a non-finite loss. The model's train/eval mode is kept."""
    was_training = model.training
    model.eval()
    try:
        outs = [model(x[i:i + 512]) for i in range(0, len(x), 512)]
        out = torch.cat(outs)
        loss = float(task.criterion(out, y))
        acc = float((out.argmax(1) == y).float().mean()) if task.loss == "ce" else None
        if not torch.isfinite(out).all():
            loss = math.inf
    finally:
        model.train(was_training)
    return {"loss": loss if math.isfinite(loss) else math.inf, "accuracy": acc}


def metric_of(task: Task, result: dict) -> float:
    """The task's metric from :func:`evaluate`'s result (accuracy, or the loss)."""
    return result["accuracy"] if task.metric == "accuracy" else result["loss"]


def collapse_level(task: Task) -> float:
    """What a model that learned nothing scores: for a classifier, chance accuracy (guessing by
    the training prior) plus a fifth of the way to perfect; for a regression, the test MSE of
    predicting the training mean. A run at or beyond it, or with a non-finite loss, collapsed.
    Classifiers are judged on accuracy even when their metric is the loss: an overfitted model
    can have a test loss above the prior's and still predict well."""
    split = task.data()
    if task.loss == "mse":
        return float(((split.test_y - split.train_y.mean()) ** 2).mean())
    counts = torch.bincount(split.train_y).double()
    prior = counts / counts.sum()
    chance = float((prior[split.test_y]).mean())  # expected accuracy of guessing by the prior
    return chance + (1 - chance) * 0.2


def collapsed(task: Task, result: dict) -> bool:
    """Whether a final :func:`evaluate` result is a collapse (see :func:`collapse_level`)."""
    if not math.isfinite(result["loss"]):
        return True
    if task.loss == "mse":
        return result["loss"] >= collapse_level(task)
    return result["accuracy"] <= collapse_level(task)


# ------------------------------------------------------------------------------ batches


class Batches:
    """Shuffled mini-batches forever (a new permutation per epoch), seeded."""

    def __init__(self, task: Task, seed: int):
        split = task.data()
        self.x, self.y, self.task = split.train_x, split.train_y, task
        self.generator = torch.Generator().manual_seed(10_007 + seed)

    def __iter__(self):
        n, b = len(self.x), self.task.batch_size
        while True:
            order = torch.randperm(n, generator=self.generator)
            for start in range(0, n - b + 1, b):  # full batches only: equal-sized steps
                idx = order[start:start + b]
                xb = self.x[idx]
                if self.task.augment is not None:
                    xb = self.task.augment(xb, self.generator)
                yield xb, self.y[idx]


# ------------------------------------------------------------------------------ data


def _split_indices(n: int, test: float, val: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.random.default_rng(0).permutation(n)
    n_test, n_val = int(round(n * test)), int(round(n * val))
    return order[n_test + n_val:], order[n_test:n_test + n_val], order[:n_test]


def _from_arrays(x: np.ndarray, y: np.ndarray, test: float = 0.25, val: float = 0.1,
                 regression: bool = False, train_cap: int | None = None) -> Split:
    tr, va, te = _split_indices(len(x), test, val)
    if train_cap is not None:
        tr = tr[:train_cap]
    mean, std = x[tr].mean(0), x[tr].std(0) + 1e-8  # statistics of the training rows only
    xs = torch.tensor((x - mean) / std, dtype=torch.float32)
    if regression:
        ym, ysd = y[tr].mean(), y[tr].std()
        ys = torch.tensor((y - ym) / ysd, dtype=torch.float32)
    else:
        ys = torch.tensor(y, dtype=torch.int64)
    return Split(xs[tr], ys[tr], xs[va], ys[va], xs[te], ys[te])


def _digits(shape: tuple[int, ...]) -> Split:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.data.astype(np.float64) / 16.0
    tr, va, te = _split_indices(len(x), 0.25, 0.1)
    xs = torch.tensor((x - 0.3) / 0.4, dtype=torch.float32).reshape(-1, *shape)  # no per-pixel scaling
    ys = torch.tensor(d.target, dtype=torch.int64)
    return Split(xs[tr], ys[tr], xs[va], ys[va], xs[te], ys[te])


def _diabetes() -> Split:
    from sklearn.datasets import load_diabetes

    d = load_diabetes()
    return _from_arrays(d.data, d.target, test=0.25, val=0.15, regression=True)


def _cancer_small() -> Split:
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    # 569 rows: 169 test, 0.1 validation, then at most 330 to train: small enough to overfit.
    return _from_arrays(d.data, d.target, test=169 / 569, val=0.12)


def _noisy_bn() -> Split:
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=2400, n_features=20, n_informative=10, n_redundant=4,
                               n_classes=5, n_clusters_per_class=2, flip_y=0.1, class_sep=1.0, random_state=0)
    return _from_arrays(x, y, test=0.4, val=0.1)


def cifar_dir() -> Path:
    for candidate in (os.environ.get("CIFAR10_DIR"), SHARED_CIFAR, ROOT / "data"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    raise FileNotFoundError("no CIFAR-10 data: set CIFAR10_DIR (python batches) or skip the cifar_cnn task")


def _cifar() -> Split:
    sys.path.insert(0, str(ROOT / "examples"))
    from cifar_data import load_cifar10, normalize

    train_x, train_y, test_x, test_y = load_cifar10(cifar_dir(), download=False)
    tr, va, _ = _split_indices(len(train_x), 0.0, 0.1)
    # Averaged down to 16x16: four times cheaper a step, and still a real image task.
    x = nn.functional.avg_pool2d(normalize(train_x), 2)
    test = nn.functional.avg_pool2d(normalize(test_x), 2)
    return Split(x[tr], train_y[tr], x[va], train_y[va], test, test_y)


def _flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=generator) < 0.5
    x = x.clone()
    x[flip] = x[flip].flip(3)
    return x


# ------------------------------------------------------------------------------ models


def _mlp(n_in: int, n_out: int, hidden: int = 64, batch_norm: bool = False) -> nn.Module:
    def block(a: int, b: int) -> list[nn.Module]:
        return [nn.Linear(a, b)] + ([nn.BatchNorm1d(b)] if batch_norm else []) + [nn.ReLU()]
    return nn.Sequential(*block(n_in, hidden), *block(hidden, hidden), nn.Linear(hidden, n_out))


def _digits_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 16, 10))


def _cifar_cnn() -> nn.Module:
    sys.path.insert(0, str(ROOT / "examples"))
    from cifar_models import small_cnn

    return small_cnn(10, width=8)


class _RowGRU(nn.Module):
    """Reads an 8x8 digit row by row."""

    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(8, 32, batch_first=True)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.gru(x)[0][:, -1])


class _RowAttention(nn.Module):
    """One transformer encoder layer over the 8 rows of a digit (learned positions), mean-pooled."""

    def __init__(self, d: int = 16):
        super().__init__()
        self.embed = nn.Linear(8, d)
        self.pos = nn.Parameter(torch.zeros(1, 8, d))
        self.encoder = nn.TransformerEncoderLayer(d, nhead=2, dim_feedforward=32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(d, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x) + self.pos).mean(1))


# ------------------------------------------------------------------------------ registry


_LOADERS: dict[str, Callable[[], Split]] = {}


@lru_cache(maxsize=None)
def _cached_split(name: str) -> Split:
    return _LOADERS[name]()


def _task(name: str, load: Callable[[], Split], **kwargs) -> Task:
    _LOADERS[name] = load
    return Task(name=name, load=load, **kwargs)


TASKS: dict[str, Task] = {t.name: t for t in [
    _task("cifar_cnn", _cifar, build=_cifar_cnn, optimizer="sgd", metric="accuracy", loss="ce",
          short_steps=400, long_steps=2000, weight_decay=5e-4, augment=_flip),
    _task("digits_mlp", lambda: _digits((64,)), build=lambda: _mlp(64, 10), optimizer="sgd", metric="accuracy",
          loss="ce", short_steps=500, long_steps=4000),
    _task("digits_cnn", lambda: _digits((1, 8, 8)), build=_digits_cnn, optimizer="sgd", metric="accuracy",
          loss="ce", short_steps=400, long_steps=2000),
    _task("diabetes_mse", _diabetes, build=lambda: _mlp(10, 1), optimizer="sgd", metric="loss", loss="mse",
          short_steps=500, long_steps=4000),
    _task("digits_gru", lambda: _digits((8, 8)), build=_RowGRU, optimizer="adam", metric="accuracy", loss="ce",
          short_steps=400, long_steps=2000),
    _task("digits_attention", lambda: _digits((8, 8)), build=_RowAttention, optimizer="adamw", metric="accuracy",
          loss="ce", short_steps=400, long_steps=2000),
    _task("cancer_small", _cancer_small, build=lambda: _mlp(30, 2), optimizer="sgd", metric="loss", loss="ce",
          short_steps=500, long_steps=4000),
    _task("noisy_bn", _noisy_bn, build=lambda: _mlp(20, 5, hidden=128, batch_norm=True), optimizer="sgd",
          metric="loss", loss="ce", short_steps=500, long_steps=4000),
]}
