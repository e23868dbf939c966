#!/usr/bin/env bash
# Install the desktop entry and icon of this nvp-live bundle for the current user
# (run from inside the bundle folder: ./_internal/install_desktop_entry.sh, or from anywhere).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
BUNDLE="$HERE"
[ -f "$BUNDLE/nvplive" ] && [ -x "$BUNDLE/nvplive" ] || BUNDLE="$(dirname "$HERE")"
[ -f "$BUNDLE/nvplive" ] && [ -x "$BUNDLE/nvplive" ] || { echo "install_desktop_entry.sh: no nvplive executable next to $HERE" >&2; exit 1; }
DATA="${XDG_DATA_HOME:-$HOME/.local/share}"
mkdir -p "$DATA/applications" "$DATA/icons/hicolor/scalable/apps"
cp "$HERE/share/icons/hicolor/scalable/apps/nvplive.svg" "$DATA/icons/hicolor/scalable/apps/nvplive.svg"
sed -e "s|^Exec=nvplive |Exec=\"$BUNDLE/nvplive\" |" "$HERE/share/applications/nvplive.desktop" > "$DATA/applications/nvplive.desktop"
command -v update-desktop-database >/dev/null 2>&1 && update-desktop-database "$DATA/applications" || true
echo "installed $DATA/applications/nvplive.desktop (Exec: $BUNDLE/nvplive)"
