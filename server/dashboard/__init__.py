"""The autolrs dashboard: every job's LR, losses and decisions in a browser, live.

An HTTP thread (:mod:`.httpd`) in the server process (``autolrs-server --http-port PORT``) or
on its own over a state folder (``autolrs-server dashboard --state-dir DIR``). It reads what the
server already keeps: the job rows and cached tuner summaries that ``status`` serves
(:mod:`.sources`), each job's bounded history (:mod:`autolrs.server.history`) and the tail of
its decision log (:mod:`.api`); it never waits for a job's lock and changes nothing. The pages
and their JavaScript (``static/``) ship in the package: nothing is fetched from elsewhere.
"""

from autolrs.server.dashboard.access import dashboard_token
from autolrs.server.dashboard.httpd import DashboardServer
from autolrs.server.dashboard.sources import LiveSource, StateDirSource

__all__ = ["DashboardServer", "LiveSource", "StateDirSource", "dashboard_token"]
