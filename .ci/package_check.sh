#!/usr/bin/env bash
# Packaging check: build the sdist and, from it, the wheel; check their metadata (twine); install
# the wheel into a fresh environment and smoke-test it from outside the checkout
# (.ci/package_smoke.py: every module imports from the wheel, the server starts, the callback
# trains, a range test runs).
#
#   bash .ci/package_check.sh        (bash run.sh package: the same, after set-up)
#
# Needs the developer environment (.venv, or $AUTOLRS_VENV; bash run.sh setup): it builds with
# its setuptools (no build isolation, so nothing is downloaded), and the fresh environment reuses
# its installed packages (torch among them) through a folder of links: only the wheel is
# installed, with --no-index and torch pinned to the installed version. Output: dist/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${AUTOLRS_VENV:-.venv}
PY="$ROOT/$VENV/bin/python"
[ -x "$PY" ] || { echo "package_check: no $VENV; run: bash run.sh setup" >&2; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/autolrs-package.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

echo "== build (sdist, then the wheel from the sdist)"
rm -rf dist
"$PY" -m build --no-isolation --outdir dist . >"$WORK/build.log" 2>&1 || { cat "$WORK/build.log" >&2; exit 1; }
ls dist
echo "== twine check"
"$PY" -m twine check --strict dist/*

echo "== install the wheel into a fresh environment"
"$PY" - "$VENV" "$WORK" <<'PY'
# Link the developer environment's packages into a folder the fresh one will see, leaving out
# autolrs itself (its editable install would otherwise shadow or satisfy the wheel).
import os, sys, sysconfig
from pathlib import Path
site = Path(sysconfig.get_paths()["purelib"])
deps = Path(sys.argv[2]) / "deps"
deps.mkdir()
for entry in site.iterdir():
    name = entry.name.lower()
    if name.startswith(("autolrs", "__editable__", "_autolrs")) or name.endswith(".pth"):
        continue
    os.symlink(entry, deps / entry.name)
PY
python_base=$("$PY" -c 'import sys; print(sys.base_prefix)')/bin/python3
# Without a pip (and setuptools) of its own, which would shadow the newer ones linked in.
"$python_base" -m venv --system-site-packages --without-pip "$WORK/venv"
FRESH_SITE=$("$WORK/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$WORK/deps" >"$FRESH_SITE/autolrs-ci-deps.pth"
"$PY" -c 'import torch; print("torch==" + torch.__version__)' >"$WORK/constraints.txt"
"$WORK/venv/bin/python" -m pip install --quiet --no-index -c "$WORK/constraints.txt" dist/*.whl
# Only autolrs's own requirements count: the system's packages may disagree among themselves.
if "$WORK/venv/bin/python" -m pip check | grep -i '^autolrs '; then exit 1; fi
"$WORK/venv/bin/python" -m pip show autolrs | sed -n 's/^\(Name\|Version\|Location\): /  \1: /p'

echo "== smoke test (from $WORK, outside the checkout)"
# Every module of the checkout, under its installed name: a package missing from setup.py's
# list fails its import below.
"$PY" - >"$WORK/modules.txt" <<'PY'
from pathlib import Path
roots = {"autolrs": Path("autolrs"), "autolrs.server": Path("server"), "autolrs.callbacks": Path("callbacks")}
for prefix, folder in roots.items():
    for path in sorted(folder.rglob("*.py")):
        parts = list(path.relative_to(folder).with_suffix("").parts)
        if parts[-1] == "__main__":  # importing it would start the server
            continue
        if parts[-1] == "__init__":
            parts.pop()
        print(".".join([prefix, *parts]))
PY
cp .ci/package_smoke.py "$WORK/"
(cd "$WORK" && env -u PYTHONPATH "$WORK/venv/bin/python" package_smoke.py modules.txt "$FRESH_SITE" \
    "$WORK/venv/bin/autolrs-server")
