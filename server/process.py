"""``autolrs.server.ServerProcess``: a tuner server in a child process (the public name).

The class lives in :mod:`autolrs.launcher` (standard library only), so the callback's embedded
server (``server="auto"``) starts servers the same way without importing the server package.
"""

from autolrs.launcher import DASHBOARD_PREFIX, READY_PREFIX, ServerProcess

__all__ = ["DASHBOARD_PREFIX", "READY_PREFIX", "ServerProcess"]
