#!/usr/bin/env bash
# Build the one-folder desktop bundle of nvp-live with PyInstaller, then smoke-test it.
#
#   bash packaging/build_bundle.sh            build into dist/nvplive/ and test it
#   bash packaging/build_bundle.sh --no-test  build only
#
# A separate build environment (default /tmp/nvplive-bundle-venv, set NVPLIVE_BUNDLE_VENV)
# gets torch==2.13.0 (CPU; install a CUDA torch into it first for a GPU bundle), the
# project (not editable) and PyInstaller; PyInstaller is not a dependency of the project.
# The smoke test runs `dist/nvplive/nvplive --version` and a 2-timepoint headless demo.
# Prints the build time and the bundle size at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
PYTHON="${PYTHON:-python3}"
VENV="${NVPLIVE_BUNDLE_VENV:-/tmp/nvplive-bundle-venv}"
WORK="${NVPLIVE_BUNDLE_WORK:-/tmp/nvplive-bundle-build}"
DIST="$ROOT/dist"
TEST=1
[ "${1:-}" = "--no-test" ] && TEST=0

pip_install() {
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@" 2>&1 | grep -v '^WARNING: Location' || true
}

start=$(date +%s)
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
pip_install --upgrade "pip>=23"
"$VENV/bin/python" -c "import torch" >/dev/null 2>&1 || pip_install "torch==2.13.0"
pip_install --upgrade "$ROOT"                      # the project as users get it (no test extras)
pip_install "pyinstaller>=6.10,<7" "pyinstaller-hooks-contrib>=2024.8"
"$VENV/bin/python" -c "import nvplive.cli, PyInstaller" || { echo "build_bundle.sh: the build environment is incomplete" >&2; exit 1; }
installed=$(date +%s)

rm -rf "$DIST/nvplive"
"$VENV/bin/pyinstaller" --noconfirm --clean --log-level WARN \
    --distpath "$DIST" --workpath "$WORK" "$ROOT/packaging/nvplive.spec"
built=$(date +%s)
BUNDLE="$DIST/nvplive"
echo "build_bundle.sh: environment $((installed - start)) s, PyInstaller $((built - installed)) s"
echo "build_bundle.sh: bundle $BUNDLE: $(du -sh "$BUNDLE" | cut -f1) in $(find "$BUNDLE" -type f | wc -l) files"

[ "$TEST" = 1 ] || exit 0
version=$("$BUNDLE/nvplive" --version)
echo "build_bundle.sh: --version: $version"
[ "$version" = "nvp-live $("$VENV/bin/python" -c 'import nvplive; print(nvplive.__version__)')" ] \
    || { echo "build_bundle.sh: unexpected version '$version'" >&2; exit 1; }
OUT="$(mktemp -d /tmp/nvplive-bundle-demo.XXXXXX)"
demo_start=$(date +%s)
env -i HOME="$HOME" PATH=/usr/bin:/bin LANG=C.UTF-8 OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" \
    "$BUNDLE/nvplive" demo --headless --timepoints 2 --device cpu --out "$OUT"
"$VENV/bin/python" -I - "$OUT" <<'PY'
import sys
from pathlib import Path

from nvplive.acquisition.recording import open_recording

found = sorted(Path(sys.argv[1]).glob("*.fdt"))
assert found, f"no recording in {sys.argv[1]}"
with open_recording(found[0]) as rec:
    assert rec.n_timepoints == 2 and not rec.interrupted, rec
    assert rec.volume_timepoints and rec.volume(rec.volume_timepoints[-1]).shape == rec.volume_shape, rec
    print(f"build_bundle.sh: demo recording {found[0]}: {rec.n_timepoints} timepoints, volumes {rec.volume_timepoints}")
PY
echo "build_bundle.sh: smoke test passed (headless demo $(( $(date +%s) - demo_start )) s); total $(( $(date +%s) - start )) s"
rm -rf "$OUT"
