"""Imported by the forkserver of the tuner processes (and nowhere else): every built-in tuner's
module, so each tuner process forks with them imported and none pays scikit-learn's import
(seconds on a busy machine) when its first AutoLRS job arrives, or after a restart. The server
process itself keeps the registry's lazy imports (:mod:`autolrs.tuners`)."""

from __future__ import annotations

import importlib

from autolrs.tuners import BUILTIN

for _module, _ in BUILTIN.values():
    try:
        importlib.import_module(_module)
    except ImportError:  # the job that names it gets the error from make_tuner
        pass
