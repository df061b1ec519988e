#!/usr/bin/env bash
# autolrs launcher.
#
#   bash run.sh [example options]   set up, start a tuner server, train the CIFAR-10 example
#                                   with the auto tuner, stop the server; results land in one folder
#                                   (--nproc N: N data-parallel ranks under torchrun)
#   bash run.sh test [pytest args]  set up and run the test suite
#   bash run.sh setup               set up only (with the test extra: a developer's set-up)
#   bash run.sh lint                set up, then ruff (lint and format check) and mypy over
#                                   autolrs/, server/, callbacks/
#   bash run.sh package             set up, then build sdist and wheel and smoke-test the wheel
#                                   in a fresh environment (.ci/package_check.sh)
#   bash run.sh --help              this help (and the example's options, once set up)
#
# Setup makes a virtual environment (.venv, or $AUTOLRS_VENV) that sees the system's packages,
# so an installed torch >= 2.1 is reused; only when none is found does it install
# $AUTOLRS_TORCH_SPEC (default torch==2.13.0). torchvision is never installed here. autolrs is
# installed editable with its plot extra (the example's curves and progress bars), for the tests
# with its test extra (pytest, Lightning, transformers); pip keeps the installed torch.
# Environment: CIFAR10_DIR (data folder), AUTOLRS_OUT (output folder), AUTOLRS_PORT
# (server port; default: a free one), AUTOLRS_TUNER (default auto).
set -euo pipefail
cd "$(dirname "$0")"

VENV=${AUTOLRS_VENV:-.venv}
PYTHON=${PYTHON:-python3}

setup() {
    if [ ! -x "$VENV/bin/python" ]; then
        echo "run.sh: creating $VENV" >&2
        "$PYTHON" -m venv --system-site-packages "$VENV"
    fi
    # shellcheck disable=SC1091
    . "$VENV/bin/activate"
    if ! python - <<'PY' 2>/dev/null
import sys, torch
major, minor = (int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
sys.exit(0 if (major, minor) >= (2, 1) else 1)
PY
    then
        echo "run.sh: no torch >= 2.1 found; installing ${AUTOLRS_TORCH_SPEC:-torch==2.13.0}" >&2
        pip install --quiet "${AUTOLRS_TORCH_SPEC:-torch==2.13.0}"
    fi
    # Reinstall only when the packaging files change or the extras asked for are missing (the
    # test extra holds the plot extra).
    local extras=${1:-plot}
    local stamp="$VENV/.autolrs-install" sum have
    sum=$(cat setup.py pyproject.toml requirements.txt autolrs/__init__.py | cksum)  # __init__: the version
    have=$(cat "$stamp" 2>/dev/null || true)
    if [ "$have" != "$sum $extras" ] && [ "$have" != "$sum test" ] \
            || ! python -c "import autolrs.server, autolrs.callbacks" 2>/dev/null; then
        echo "run.sh: installing autolrs (editable, extras: $extras) and its requirements" >&2
        # The torch already installed is pinned, so no extra's requirement can replace it.
        local pin
        pin=$(mktemp)
        python -c 'import torch; print("torch==" + torch.__version__)' > "$pin"
        pip install --quiet -c "$pin" -e ".[$extras]"
        rm -f "$pin"
        echo "$sum $extras" > "$stamp"
    fi
}

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'
    if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import autolrs.callbacks" 2>/dev/null; then
        echo
        "$VENV/bin/python" examples/cifar10.py --help
    else
        echo "(After set-up, bash run.sh --help also lists the example's options.)"
    fi
}

# One line and a non-zero exit when the example would find no data, before anything starts.
check_data() {
    python - "$@" <<'PY'
import argparse, sys
sys.path.insert(0, "examples")
from cifar_data import data_problem, resolve_data_dir
parser = argparse.ArgumentParser(add_help=False)
parser.add_argument("--data-dir")
known, _ = parser.parse_known_args(sys.argv[1:])
problem = data_problem(resolve_data_dir(known.data_dir))
if problem:
    print(f"run.sh: {problem}", file=sys.stderr)
    sys.exit(1)
PY
}

run_tests() {
    setup test
    exec python -m pytest -q tests "$@"
}

# The lint, format and type checks CI runs (settings in pyproject.toml). mypy checks the
# packages under their installed names: server/ and callbacks/ are laid under autolrs/ in a
# folder of links, as setup.py's package_dir installs them.
run_lint() {
    setup test
    local status=0 tree=build/typecheck entry
    ruff check autolrs server callbacks || status=1
    ruff format --check autolrs server callbacks || status=1
    rm -rf "$tree" && mkdir -p "$tree/autolrs"
    for entry in autolrs/*; do ln -s "$PWD/$entry" "$tree/$entry"; done
    ln -s "$PWD/server" "$tree/autolrs/server"
    ln -s "$PWD/callbacks" "$tree/autolrs/callbacks"
    # Reported with the checkout's paths.
    (cd "$tree" && mypy --config-file ../../pyproject.toml --cache-dir ../mypy-cache -p autolrs) \
        | sed -e 's#^autolrs/server/#server/#' -e 's#^autolrs/callbacks/#callbacks/#' || status=1
    return "$status"
}

run_example() {
    local arg
    for arg in "$@"; do
        case "$arg" in -h|--help) usage; return 0 ;; esac
    done
    setup
    check_data "$@" || exit 1
    local out=${AUTOLRS_OUT:-runs/cifar10-$(date +%Y%m%d-%H%M%S)}
    mkdir -p "$out"
    local port=${AUTOLRS_PORT:-0}
    python -m autolrs.server --port "$port" --state-dir "$out/server-state" >"$out/server.out" 2>"$out/server.log" &
    local server_pid=$!
    # Stop the server however this script ends (success, failure, Ctrl-C).
    trap 'kill -TERM '"$server_pid"' 2>/dev/null || true; wait '"$server_pid"' 2>/dev/null || true' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    local endpoint="" i
    for i in $(seq 1 300); do
        endpoint=$(sed -n 's/^autolrs-server listening on \(tcp:[^ ]*\).*/\1/p' "$out/server.out" | head -n 1)
        [ -n "$endpoint" ] && break
        if ! kill -0 "$server_pid" 2>/dev/null; then
            echo "run.sh: the server exited during start-up; see $out/server.log" >&2
            cat "$out/server.log" >&2
            exit 1
        fi
        sleep 0.1
    done
    if [ -z "$endpoint" ]; then
        echo "run.sh: the server did not report ready within 30 s; see $out/server.log" >&2
        exit 1
    fi
    echo "run.sh: server ready at $endpoint; output in $out" >&2
    python examples/cifar10.py --tuner "${AUTOLRS_TUNER:-auto}" --server "$endpoint" --out "$out" "$@"
}

case "${1:-}" in
    test) shift; run_tests "$@" ;;
    setup) setup test ;;
    lint) run_lint ;;
    package) setup test; bash .ci/package_check.sh ;;
    -h|--help|help) usage ;;
    *) run_example "$@" ;;
esac
