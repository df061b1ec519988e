"""The distribution installs only ``autolrs`` import names (never a bare ``server`` or
``callbacks``), ships the server's embedded defaults and a ``py.typed`` marker, declares the
console script, and keeps plotting, progress bars, pytest and the frameworks in extras."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    build = tmp_path_factory.mktemp("build")
    # A copy of the source without the checkout's build/ folder, whose leftovers from earlier
    # builds would otherwise end up in the wheel (and hide a package missing from setup.py).
    source = build / "source"
    skip = {"build", "dist", ".venv", ".git", "runs", "data", "autolrs-state"}
    shutil.copytree(ROOT, source, ignore=lambda folder, names: [
        n for n in names if (Path(folder) == ROOT and n in skip) or n == "__pycache__" or n.endswith(".egg-info")])
    # Build without network: the installed setuptools builds it.
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                             "--quiet", "-w", str(out), str(source)], capture_output=True, text=True,
                            timeout=300, cwd=build)
    if result.returncode != 0 and "setuptools" in result.stderr and "No module named" in result.stderr:
        pytest.skip("setuptools is not installed in this environment")
    assert result.returncode == 0, result.stderr
    wheels = list(out.glob("autolrs-*.whl"))
    assert len(wheels) == 1
    return zipfile.ZipFile(wheels[0])


def test_only_autolrs_import_names(wheel):
    top_level = {name.split("/")[0] for name in wheel.namelist()}
    code = {name for name in top_level if not name.endswith(".dist-info")}
    assert code == {"autolrs"}, top_level


def test_server_and_callbacks_live_under_autolrs(wheel):
    names = set(wheel.namelist())
    for module in ("autolrs/server/cli.py", "autolrs/server/dispatcher.py", "autolrs/server/defaults.yaml",
                   "autolrs/callbacks/callback.py", "autolrs/callbacks/client.py", "autolrs/wire/protocol.py",
                   "autolrs/tuners/autolrs_tuner.py"):
        assert module in names, module


def test_every_package_of_the_checkout_is_in_the_wheel(wheel):
    # setup.py lists its packages by hand: a new subpackage left out of it would be missing
    # from a wheel (an editable install would still find it).
    names = set(wheel.namelist())
    folders = {"autolrs": ROOT / "autolrs", "autolrs/server": ROOT / "server", "autolrs/callbacks": ROOT / "callbacks"}
    for prefix, folder in folders.items():
        for init in folder.rglob("__init__.py"):
            package = init.parent.relative_to(folder).as_posix()
            target = prefix if package == "." else f"{prefix}/{package}"
            assert f"{target}/__init__.py" in names, f"{target} is missing: add it to setup.py's packages"


def test_console_script_is_declared(wheel):
    entry_points = next(n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt"))
    text = wheel.read(entry_points).decode()
    assert "autolrs-server = autolrs.server.cli:main" in text


def test_torch_requirement_is_a_floor(wheel):
    metadata = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    requires = [line for line in wheel.read(metadata).decode().splitlines()
                if re.match(r"Requires-Dist: torch\b(?!vision)", line)]
    # A floor that an installed torch satisfies: pip must not fetch another (CUDA) build.
    assert requires == ["Requires-Dist: torch>=2.1"], requires


def test_typed_and_plotting_only_in_an_extra(wheel):
    names = set(wheel.namelist())
    assert "autolrs/py.typed" in names  # PEP 561: the whole autolrs package is typed
    metadata = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    requires = [line.split(": ", 1)[1] for line in wheel.read(metadata).decode().splitlines()
                if line.startswith("Requires-Dist: ")]
    plain = {re.split(r"[<>=; ]", r)[0] for r in requires if "extra ==" not in r}
    assert plain == {"torch", "numpy", "scipy", "scikit-learn", "pyzmq", "pyyaml"}  # a server-only install
    extra = {r for r in requires if "extra ==" in r}
    for package, name in (("matplotlib", "plot"), ("tqdm", "plot"), ("pytest", "test"), ("lightning", "test"),
                          ("transformers", "test"), ("lightning", "lightning"), ("transformers", "transformers")):
        assert any(r.startswith(package) and f'extra == "{name}"' in r for r in extra), (package, name)
