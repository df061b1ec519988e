"""The dependency rule (docs/design.md), enforced over every module of the product.

Each module is imported in a fresh interpreter, and what it brought into ``sys.modules`` is
checked against the imports its layer forbids:

* the core (``autolrs``, ``autolrs.errors``, ``autolrs.actions``, ``autolrs.wire``,
  ``autolrs.launcher``): the standard library only, since both sides import it;
* tuners and maths: no torch, no zmq (the server runs them on a CPU box, no training there);
* callbacks: no server, no tuners, no scipy, no scikit-learn (a training process stays light);
  the framework adapters (``lightning``, ``transformers``): no server, no tuners (the
  frameworks themselves import scipy), checked only where the framework is installed;
* server: no torch;
* optim (in-process methods): no zmq, no server, no tuners;
* testing: what each helper's own docs promise (the package and the simulated client: no torch,
  no zmq).

A module that belongs to no layer fails too, so a new module must be placed. The last cases
plant a module with a forbidden import and check that the same check flags it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Folders of the checkout and the import names they install as (setup.py's package_dir).
SOURCES = {"autolrs": ROOT / "autolrs", "autolrs.server": ROOT / "server", "autolrs.callbacks": ROOT / "callbacks"}

STDLIB_ONLY = {"torch", "zmq", "numpy", "scipy", "sklearn", "yaml", "autolrs.tuners", "autolrs.server",
               "autolrs.callbacks", "autolrs.optim", "autolrs.testing"}
MATHS = {"torch", "zmq", "autolrs.server", "autolrs.callbacks", "autolrs.optim"}
CALLBACKS = {"autolrs.server", "autolrs.tuners", "scipy", "sklearn"}
ADAPTERS = {"autolrs.server", "autolrs.tuners"}
SERVER = {"torch", "autolrs.callbacks", "autolrs.optim"}
OPTIM = {"zmq", "autolrs.server", "autolrs.tuners", "autolrs.callbacks"}
NO_TORCH_NO_ZMQ = {"torch", "zmq", "autolrs.server", "autolrs.callbacks"}

#: Module (or package prefix) -> the imports it must not bring in; the longest match wins.
RULES = {
    "autolrs": STDLIB_ONLY,  # the package itself only (see rule_for)
    "autolrs.errors": STDLIB_ONLY,
    "autolrs.actions": STDLIB_ONLY,
    "autolrs.wire": STDLIB_ONLY,
    "autolrs.launcher": STDLIB_ONLY,
    "autolrs.tuners": MATHS,
    "autolrs.forecast": MATHS,
    "autolrs.gp": MATHS,
    "autolrs.space": MATHS,
    "autolrs.lr_curve": MATHS,
    "autolrs.delta_stats": MATHS,
    "autolrs.divergence": MATHS,
    "autolrs.trial_checks": MATHS,
    "autolrs.callbacks": CALLBACKS,
    "autolrs.callbacks.lightning": ADAPTERS,
    "autolrs.callbacks.transformers": ADAPTERS,
    "autolrs.server": SERVER,
    "autolrs.optim": OPTIM,
    "autolrs.testing": NO_TORCH_NO_ZMQ,
    "autolrs.testing.simulated": NO_TORCH_NO_ZMQ,
    "autolrs.testing.peer": {"torch", "autolrs.server", "autolrs.callbacks"},
    "autolrs.testing.training": {"zmq", "autolrs.server", "autolrs.callbacks"},
    "autolrs.testing.bitwise": {"zmq", "autolrs.server", "autolrs.callbacks"},
}


def rule_for(module: str) -> set[str]:
    """The forbidden imports of ``module``: its longest matching rule (``autolrs`` alone covers
    only the package itself, so a new top-level module has no rule until it is given one)."""
    matches = [prefix for prefix in RULES
               if module == prefix or (prefix != "autolrs" and module.startswith(prefix + "."))]
    if not matches:
        raise LookupError(f"{module} belongs to no layer: add it to RULES in {Path(__file__).name}")
    return RULES[max(matches, key=len)]


def product_modules() -> list[str]:
    modules = []
    for package, folder in SOURCES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__main__":  # runs the server when imported
                continue
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join([package, *parts])
            if package == "autolrs" and name.split(".")[1:2] in (["server"], ["callbacks"]):
                continue  # not in the checkout's autolrs/ folder
            modules.append(name)
    return modules


#: Modules that import an optional framework: checked where it is installed.
FRAMEWORKS = {"autolrs.callbacks.lightning": ("lightning", "pytorch_lightning"),
              "autolrs.callbacks.transformers": ("transformers",)}


def installed(module: str) -> bool:
    return any(importlib.util.find_spec(name) is not None for name in FRAMEWORKS.get(module, ("json",)))


MODULES = [m for m in product_modules() if installed(m)]
IMPORT_AND_LIST = "import importlib, json, sys; importlib.import_module(sys.argv[1]); print(json.dumps(sorted(sys.modules)))"


def modules_after_import(module: str, path: Path | None = None) -> list[str]:
    """``sys.modules`` of a fresh interpreter after ``import module`` (``path``: prepended to
    its ``sys.path``)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(path), env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-c", IMPORT_AND_LIST, module], capture_output=True, text=True,
                             timeout=300, env=env, cwd=path or ROOT)
    assert result.returncode == 0, f"import {module} failed:\n{result.stderr[-3000:]}"
    return json.loads(result.stdout)


def forbidden_found(loaded: list[str], forbidden: set[str]) -> list[str]:
    return sorted(name for name in forbidden if any(m == name or m.startswith(name + ".") for m in loaded))


@pytest.fixture(scope="module")
def imported(request) -> dict[str, list[str]]:
    """Every product module this session's selected cases check, each imported in its own fresh
    interpreter, two at a time."""
    wanted = [item.callspec.params["module"] for item in request.session.items
              if getattr(item, "originalname", None) == "test_dependency_rule"
              and item.callspec.params["planted_source"] is None]
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(wanted, pool.map(modules_after_import, wanted)))


#: Modules planted in a temporary folder: (name, source, the layer it pretends to be in, expected).
PLANTED = [
    ("planted_tuner_with_zmq", "import autolrs.tuners.base\nimport zmq\n", "autolrs.tuners.planted", ["zmq"]),
    ("planted_callback_with_scipy", "import autolrs.callbacks.errors\nimport scipy.ndimage\n",
     "autolrs.callbacks.planted", ["scipy"]),
    ("planted_server_module_with_torch", "import autolrs.server.keyed_locks\nimport torch\n",
     "autolrs.server.planted", ["torch"]),
    ("planted_clean_tuner", "import autolrs.tuners.base\nimport json\n", "autolrs.tuners.planted", []),
]

CASES = [pytest.param(m, None, m, [], id=m) for m in MODULES] + [
    pytest.param(name, source, layer, expected, id=f"planted:{name}") for name, source, layer, expected in PLANTED]


@pytest.mark.parametrize("module, planted_source, layer, expected", CASES)
def test_dependency_rule(module, planted_source, layer, expected, imported, tmp_path):
    forbidden = rule_for(layer)
    if planted_source is None:
        loaded = imported[module]
    else:
        (tmp_path / f"{module}.py").write_text(planted_source)
        loaded = modules_after_import(module, tmp_path)
        assert module in loaded
    found = forbidden_found(loaded, forbidden)
    assert found == expected, f"importing {module} brings in {found}, which the rule of {layer} forbids"


def test_every_module_is_covered_and_belongs_to_a_layer():
    assert {"autolrs.callbacks.lr_finder", "autolrs.server.dispatcher", "autolrs.tuners.autolrs_tuner",
            "autolrs.wire.messages", "autolrs.lr_curve", "autolrs.testing.peer"} <= set(MODULES)
    for module in MODULES:
        rule_for(module)
    with pytest.raises(LookupError, match="belongs to no layer"):
        rule_for("autolrs.something_new")


def test_lr_finder_keeps_scipy_out_of_the_training_process():
    # The issue's own check, verbatim.
    code = ("import autolrs.callbacks, sys; from autolrs.callbacks import LRFinder; "
            "assert 'scipy' not in sys.modules")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_server_starts_without_scipy_and_scikit_learn():
    # The start-up cost of an embedded server: only the autolrs tuner's module needs them, and
    # the registry imports a tuner's module when a job first uses it.
    code = ("import sys; import autolrs.server.cli, autolrs.server.transport; "
            "from autolrs.server.config import load_config; load_config(); "
            "from autolrs.tuners import make_tuner; make_tuner('cosine', {'initial_lr': 0.1}); "
            "heavy = sorted(m for m in ('scipy', 'sklearn') if m in sys.modules); "
            "assert not heavy, heavy; make_tuner('autolrs', {'initial_lr': 0.1}); assert 'sklearn' in sys.modules")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
