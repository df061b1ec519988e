"""The training-process side of autolrs: a callback for your loop and its reliable client.

Installed as ``autolrs.callbacks`` (setup.py maps this folder there). Modules:

* ``client``: reliable request-reply over ZeroMQ ("Lazy Pirate"); knows no torch.
* ``state``: checkpoints of model, optimizer, GradScaler and RNG states (real copies, in
  memory or on disk) restored bitwise.
* ``callback``: :class:`AutoLRS`, the object you call after ``optimizer.step()``.
* ``lr_finder``: :class:`LRFinder`, torch-lr-finder's interface to the ``range_test`` tuner.
* ``loss_diff``: :class:`LossDiffTuner`, autolrtuner's interface to the ``loss_diff`` tuner
  (``probe``: how the callback carries out its probes).
* ``standalone``: what those two share (the snapshot behind ``reset()``, batches, plots).

``AutoLRS``, ``LRFinder`` and ``CheckpointStore`` are loaded lazily, so ``import autolrs.callbacks.client``
(or importing the exceptions) does not import torch. This package never imports the server
or the tuners.
"""

# Imported as bare ``callbacks`` (a checkout on sys.path), a second copy of every module would
# load next to ``autolrs.callbacks`` and isinstance checks across the two would fail.
if __name__ != "autolrs.callbacks":
    raise ImportError(
        f"the autolrs callback package must be imported as 'autolrs.callbacks', not {__name__!r}; "
        "install the distribution (pip install -e .) and use 'from autolrs.callbacks import AutoLRS'")

from autolrs.callbacks.errors import (  # noqa: E402
    AutoLRSConfigError,
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
    "LossDiffTuner": "autolrs.callbacks.loss_diff",
}

__all__ = ["AutoLRS", "CheckpointStore", "Client", "LRFinder", "LossDiffTuner", "AutoLRSConfigError", "AutoLRSError",
           "AutoLRSWarning", "ServerError", "ServerUnavailable", "ServerUnavailableWarning"]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
