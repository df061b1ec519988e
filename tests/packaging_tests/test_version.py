"""One version: autolrs.__version__ (the only place it is written), the installed distribution's
metadata (setup.py reads it from there) and ``autolrs-server --version`` agree."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import autolrs

ROOT = Path(__file__).resolve().parents[2]


def test_version_is_written_once():
    written = [path.relative_to(ROOT).as_posix() for path in (ROOT / "setup.py", ROOT / "pyproject.toml",
                                                              ROOT / "autolrs" / "__init__.py")
               if re.search(r"^\s*_?_?version_?_?\s*=\s*[\"']\d", path.read_text(), re.MULTILINE | re.IGNORECASE)]
    assert written == ["autolrs/__init__.py"]


def test_distribution_and_package_agree():
    assert re.fullmatch(r"\d+\.\d+\.\d+([ab]|rc)?\d*", autolrs.__version__)
    assert importlib.metadata.version("autolrs") == autolrs.__version__


def test_server_version_flag_prints_the_package_version():
    out = subprocess.run([sys.executable, "-m", "autolrs.server", "--version"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[:2] == ["autolrs-server", autolrs.__version__], out.stdout
