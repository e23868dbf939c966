#!/usr/bin/env bash
# Set up a development environment for nvp-live and run the demo or the tests.
#
#   bash packaging/dev.sh demo [ARGS...]   set up, then start `nvplive demo ARGS...`
#   bash packaging/dev.sh test [ARGS...]   set up, then run the test suite under a virtual display, in two
#                                          processes (NVPLIVE_TEST_WORKERS=N for another number)
#                                          (it includes tests/test_guardrails.py: ruff, mypy, import contracts)
#   bash packaging/dev.sh lint             set up, then run only the guard-rails (before landing)
#   bash packaging/dev.sh setup            set up only
#
# Set-up is idempotent: Debian packages for Qt/OpenGL under Xvfb (when missing and
# when apt is available), a virtual environment in .venv, torch==2.13.0 (a CPU build;
# GPU users may install a CUDA build of torch into .venv first), then the project
# with its test extras, installed editable.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE="${1:-setup}"; shift || true
PYTHON="${PYTHON:-python3}"
VENV="${NVPLIVE_VENV:-.venv}"

APT_PACKAGES="xvfb xauth libgl1-mesa-dri libegl1 libglx-mesa0 libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0 libxcb-shape0 libxcb-xinerama0 libxcb-randr0 libfontconfig1 libdbus-1-3"

install_system_packages() {
    command -v apt-get >/dev/null 2>&1 || { echo "dev.sh: no apt-get; install Xvfb and Mesa GL yourself" >&2; return 0; }
    local missing=()
    for p in $APT_PACKAGES; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "dev.sh: installing system packages: ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

setup_python() {
    if [ ! -x "$VENV/bin/python" ]; then
        "$PYTHON" -m venv "$VENV"
    fi
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade "pip>=23" 2>&1 | grep -v '^WARNING: Location' || true
    if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check "torch==2.13.0" 2>&1 | grep -v '^WARNING: Location' || true
    fi
    # setuptools' editable-install banner (a folder named like the package: this checkout is it) is noise here
    PYTHONWARNINGS="ignore:Editable installation" \
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[test]" 2>&1 | grep -v '^WARNING: Location' || true
    "$VENV/bin/python" -c "import nvplive.recon.physics, PySide6, vispy, pymmcore_plus" \
        || { echo "dev.sh: the environment in $VENV is incomplete" >&2; exit 1; }
    echo "dev.sh: $VENV is ready ($("$VENV/bin/nvplive" --version), torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)'))"
}

with_display() {
    if [ -n "${DISPLAY:-}" ] && [ "${NVPLIVE_FORCE_XVFB:-0}" != "1" ]; then
        "$@"
    else
        xvfb-run -a -s "-screen 0 1280x800x24" "$@"
    fi
}

install_system_packages
setup_python

case "$MODE" in
    setup) ;;
    demo)
        with_display "$VENV/bin/nvplive" demo "$@"
        ;;
    test)
        export NVPLIVE_FORCE_XVFB=1
        set +e
        # one test process per core (each test runs torch on one thread: tests/conftest.py);
        # whole files per process, so a file's module fixtures are built once
        with_display "$VENV/bin/python" -m pytest -q -p no:cacheprovider -n "${NVPLIVE_TEST_WORKERS:-2}" --dist loadfile "$@"
        rc=$?
        set -e
        if [ $rc -eq 5 ]; then
            echo "dev.sh: pytest collected no tests" >&2
            exit 1
        fi
        exit $rc
        ;;
    lint)
        "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/test_guardrails.py
        ;;
    *)
        echo "usage: bash packaging/dev.sh {setup|demo|test|lint} [ARGS...]" >&2
        exit 2
        ;;
esac
