"""The autolrs tuner server: ZeroMQ in front of a dispatcher that holds one tuner per job.

Installed as ``autolrs.server`` (setup.py maps this folder there). Modules: ``config`` (YAML and
defaults), ``sessions`` (one session per job, saved after every change), ``dispatcher`` (request
in, reply out, no sockets), ``transport`` (the ZeroMQ loop), ``cli`` (the command line, the
only place that configures logging and signals), ``pool``, ``keyed_locks``, ``leases`` and
``security`` (many jobs, authentication), and ``process``: :class:`ServerProcess`, the public
way to run a server as a child process. The server never imports torch.
"""

# Imported as bare ``server`` (e.g. from a checkout on sys.path), relative paths and package
# data would resolve against the wrong package and a second copy of every module would load.
if __name__ != "autolrs.server":
    raise ImportError(
        f"the autolrs server package must be imported as 'autolrs.server', not {__name__!r}; "
        "install the distribution (pip install -e .) and use 'import autolrs.server' "
        "or 'python -m autolrs.server'"
    )

from autolrs.server.process import ServerProcess  # noqa: E402  (standard library only)

__all__ = ["ServerProcess"]
