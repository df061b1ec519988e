#!/usr/bin/env bash
# autolrs launcher.
#
#   bash run.sh [example options]   set up, start a tuner server, train the CIFAR-10 example
#                                   with the auto tuner, stop the server; results land in one folder
#                                   (--nproc N: N data-parallel ranks under torchrun)
#   bash run.sh test [pytest args]  set up and run the test suite
#
# Setup makes a virtual environment (.venv, or $AUTOLRS_VENV) that sees the system's packages,
# so an installed torch >= 2.1 is reused; only when none is found does it install
# $AUTOLRS_TORCH_SPEC (default torch==2.13.0). torchvision is never installed here.
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
    # Reinstall only when the packaging files change.
    local stamp="$VENV/.autolrs-install" want
    want=$(cat setup.py pyproject.toml requirements.txt | cksum)
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! python -c "import autolrs.server, autolrs.callbacks" 2>/dev/null; then
        echo "run.sh: installing autolrs (editable) and its requirements" >&2
        pip install --quiet -e . -r requirements.txt
        echo "$want" > "$stamp"
    fi
}

run_tests() {
    setup
    exec python -m pytest -q tests "$@"
}

run_example() {
    setup
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
    setup) setup ;;
    *) run_example "$@" ;;
esac
