"""autolrs: learning-rate tuning as a service for PyTorch.

The core package holds what both sides share: the wire protocol, the action vocabulary and
the tuners (pure algorithms: no torch, no sockets). The server lives in ``autolrs.server``,
the training-loop callback in ``autolrs.callbacks``.
"""

__version__ = "0.1.0"
