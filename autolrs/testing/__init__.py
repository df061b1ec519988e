"""What the tests and the benchmarks share (not needed to use autolrs).

* :mod:`autolrs.testing.simulated`: a simulated training client that carries out a tuner's
  plans against a synthetic loss with a known best LR (numpy only: no torch, no sockets).
  ``QuadraticBowl`` and ``SimulatedClient`` are importable from here.
* :mod:`autolrs.testing.peer`: a scripted ZeroMQ peer that stands in for the server and
  answers with fixed plans (pyzmq; no torch).
* :mod:`autolrs.testing.training`: a seeded MLP on scikit-learn's digits (no download), its
  batches, one training step, the validation loss, the LRs of a torch scheduler (torch).
* :mod:`autolrs.testing.bitwise`: copies of model/optimizer state and their exact comparison
  (torch).
* :mod:`autolrs.testing.browser`: headless Chromium driven by selenium, for the dashboard's
  tests and benchmark (the ``test`` extra and Debian's chromium and chromium-driver).

Only the simulated client is imported with the package, so ``import autolrs.testing`` stays
free of torch and zmq.
"""

from autolrs.testing.simulated import QuadraticBowl, SimulatedClient

__all__ = ["QuadraticBowl", "SimulatedClient"]
