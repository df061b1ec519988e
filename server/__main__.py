"""``python -m autolrs.server``: the same command line as ``autolrs-server``."""

import sys

from autolrs.server.cli import main

sys.exit(main())
