"""The training-process side of autolrs: a callback for your loop and its reliable client.

Installed as ``autolrs.callbacks`` (setup.py maps this folder there). Modules:

* ``callback``: :class:`AutoLRS`, the object you call after ``optimizer.step()``, made of:
  ``options`` (its settings, checked), ``link`` (the fail-open line to the server),
  ``client`` (reliable request-reply over ZeroMQ, "Lazy Pirate"; knows no torch),
  ``segment`` (the ``run`` being trained), ``lr`` (the one place that writes param groups'
  LRs), ``state`` (checkpoints of model, optimizer, GradScaler and RNG, restored bitwise;
  ``host_slots`` for host memory), ``probe`` (the ``probe`` action), ``hypergrad`` (the
  on-device scalars of ``hd``, ``rtho``, ``marthe``; ``tangents`` and ``validation`` beside it),
  ``distributed`` (DDP: rank 0 talks, every rank acts), ``plans`` (each plan carried out,
  outages), ``job_state`` (the state dict's layout) and ``optimizer_steps`` (GradScaler-skipped
  steps).
* ``lr_finder``: :class:`LRFinder`, torch-lr-finder's interface to the ``range_test`` tuner.
* ``loss_diff``: :class:`LossDiffFinder`, autolrtuner's interface to the ``loss_diff`` tuner.
* ``standalone``: what those two share (the snapshot behind ``reset()``, batches, plots).

``AutoLRS``, ``LRFinder``, ``LossDiffFinder`` and ``CheckpointStore`` are loaded lazily, so
``import autolrs.callbacks.client`` (or importing the exceptions) does not import torch. This
package never imports the server, the tuners, scipy or scikit-learn.
"""

# Imported as bare ``callbacks`` (a checkout on sys.path), a second copy of every module would
# load next to ``autolrs.callbacks`` and isinstance checks across the two would fail.
if __name__ != "autolrs.callbacks":
    raise ImportError(
        f"the autolrs callback package must be imported as 'autolrs.callbacks', not {__name__!r}; "
        "install the distribution (pip install -e .) and use 'from autolrs.callbacks import AutoLRS'"
    )

from autolrs.callbacks.errors import (  # noqa: E402
    AutoLRSConfigError,
    AutoLRSDeprecationWarning,
    AutoLRSError,
    AutoLRSWarning,
    ServerError,
    ServerUnavailable,
    ServerUnavailableWarning,
)

_LAZY = {
    "AutoLRS": "autolrs.callbacks.callback",
    "CheckpointStore": "autolrs.callbacks.state",
    "Client": "autolrs.callbacks.client",
    "LRFinder": "autolrs.callbacks.lr_finder",
    "LossDiffFinder": "autolrs.callbacks.loss_diff",
}

__all__ = [
    "AutoLRS",
    "CheckpointStore",
    "Client",
    "LRFinder",
    "LossDiffFinder",
    "AutoLRSConfigError",
    "AutoLRSDeprecationWarning",
    "AutoLRSError",
    "AutoLRSWarning",
    "ServerError",
    "ServerUnavailable",
    "ServerUnavailableWarning",
]


def __getattr__(name: str):
    import importlib

    if name == "LossDiffTuner":  # the former name: served, not cached, so every use warns
        import warnings

        loss_diff = importlib.import_module("autolrs.callbacks.loss_diff")
        warnings.warn(loss_diff.RENAMED, DeprecationWarning, stacklevel=2)
        return loss_diff.LossDiffFinder
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
