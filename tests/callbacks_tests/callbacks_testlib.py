"""The ``peer`` fixture of the callback tests: scripted peers (:mod:`autolrs.testing.peer`)
that stand in for the server, closed at teardown.

Imported by the test modules as a plain module (pytest's default ``prepend`` import mode puts
this folder on ``sys.path``), not defined in a ``conftest.py``: a folder-level conftest would
shadow ``tests/conftest.py`` for modules that import it by its bare name.
"""

from __future__ import annotations

import pytest

from autolrs.testing.peer import ScriptedPeer


@pytest.fixture
def peer():
    """Factory of scripted peers (closed at teardown): ``peer(handler, port=None)``."""
    made = []

    def start(handler, port=None):
        p = ScriptedPeer(handler, port=port)
        made.append(p)
        return p

    yield start
    for p in made:
        p.close()
