"""What the tools that run their own loop (``LRFinder``, ``LossDiffFinder``) share: a snapshot
of model and optimizer taken at construction and restored by ``reset()``, moving batches to the
device, an endless stream of batches, a progress bar, and a matplotlib figure that is saved
headless or shown. matplotlib and tqdm (the ``plot`` extra) are imported only when used.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from autolrs.callbacks.state import CheckpointStore


class StandaloneTool:
    """Model, optimizer, criterion and server settings, and a bitwise snapshot of model and
    optimizer (and GradScaler) taken at construction. ``memory_cache=False`` keeps the
    snapshots on disk in a private temp folder under ``cache_dir``, removed by :meth:`close`."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        criterion: Any,
        server: str,
        device: str | torch.device | None,
        *,
        memory_cache: bool,
        cache_dir: str | None,
        job: str | None,
        timeout: float,
        include_rng: bool,
        grad_scaler: Any = None,
    ):
        self.model = model
        self.optimizer = optimizer
        self.criterion = criterion
        self.server = server
        self.job = job
        self.timeout = timeout
        self.include_rng = include_rng
        self.storage = "memory" if memory_cache else "disk"
        self.cache_dir = cache_dir if self.storage == "disk" else None  # torch-lr-finder: used on disk only
        self.model_device = model_device(model)
        self.device = torch.device(device) if device is not None else self.model_device
        self._state = CheckpointStore(
            model, optimizer, scaler=grad_scaler, include_rng=include_rng, storage=self.storage, directory=cache_dir
        )
        self._state.save("initial")

    def reset(self) -> None:
        """Model and optimizer (and GradScaler) back to their state at construction, bitwise."""
        self._state.restore("initial")
        self.model.to(self.model_device)

    def close(self) -> None:
        """Drop the snapshot (and its temp folder with ``memory_cache=False``); idempotent."""
        self._state.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(enabled: bool, total: int, desc: str) -> Any:
    """A tqdm bar of ``total`` steps (on stderr), or one that shows nothing when ``enabled`` is
    false or tqdm is not installed (it comes with the ``plot`` extra)."""
    if enabled:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return _NoBar()
        return tqdm(total=total, desc=desc, leave=False)
    return _NoBar()


def model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def inputs_labels(batch: Any) -> tuple[Any, Any]:
    if not isinstance(batch, (list, tuple)) or len(batch) < 2:
        raise ValueError(
            "a batch must be a list or tuple whose first two elements are the inputs and the "
            f"labels, got {type(batch).__name__}"
        )
    return batch[0], batch[1]


def move_to_device(obj: Any, device: torch.device, non_blocking: bool) -> Any:
    if hasattr(obj, "to"):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, tuple):
        return tuple(move_to_device(o, device, non_blocking) for o in obj)
    if isinstance(obj, list):
        return [move_to_device(o, device, non_blocking) for o in obj]
    if isinstance(obj, dict):
        return {k: move_to_device(v, device, non_blocking) for k, v in obj.items()}
    return obj


class Batches:
    """Endless (inputs, labels) from an iterable of batches: restarts it when exhausted."""

    def __init__(self, loader: Iterable):
        if not hasattr(loader, "__iter__"):
            raise ValueError(f"`train_loader` has unsupported type: {type(loader)}")
        self.loader = loader
        self._it = iter(loader)

    def next(self) -> tuple[Any, Any]:
        try:
            batch = next(self._it)
        except StopIteration:
            self._it = iter(self.loader)
            try:
                batch = next(self._it)
            except StopIteration:
                raise ValueError("`train_loader` yields no batches") from None
        return inputs_labels(batch)


def open_axes(ax: Any, path: str | None) -> tuple[Any, bool]:
    """``(ax, show)``: the given axes, or new ones: on an Agg canvas when the figure is only
    saved to ``path`` (nothing is shown, no display needed), else through pyplot to be shown."""
    if ax is not None:
        return ax, False
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install 'autolrs[plot]'") from None
    if path is not None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6.4, 4.8))
        FigureCanvasAgg(fig)
        return fig.add_subplot(1, 1, 1), False
    import matplotlib.pyplot as plt

    return plt.subplots()[1], True


def finish_axes(ax: Any, path: str | None, show: bool) -> None:
    """Save the figure of ``ax`` as a PNG at ``path``, or show it when :func:`open_axes` said so."""
    if path is not None:
        ax.figure.savefig(path, format="png")
    elif show:
        import matplotlib.pyplot as plt

        plt.show()
