#!/usr/bin/env bash
# Add Studio to the desktop for this user: the menu entry, the icon, the workflow file
# type (double-click opens it in Studio) and "Open With > Studio" for PNG images.
#   bash install-desktop.sh [PATH_TO_STUDIO]     (default: the studio beside this script's
#                                                 folder in the bundle, else `studio` on PATH)
#   bash install-desktop.sh --uninstall
# Writes only under ${XDG_DATA_HOME:-~/.local/share}; needs no root.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
data=${XDG_DATA_HOME:-$HOME/.local/share}

if [ "${1:-}" = --uninstall ]; then
    rm -f "$data/applications/studio.desktop" "$data/mime/packages/studio-mime.xml"
    rm -f "$data"/icons/hicolor/*/apps/studio.png "$data/icons/hicolor/scalable/apps/studio.svg"
else
    exe=${1:-}
    if [ -z "$exe" ]; then
        if [ -x "$here/../studio" ]; then exe=$(cd "$here/.." && pwd)/studio
        else exe=$(command -v studio || true); fi
    fi
    [ -n "$exe" ] || { echo "install-desktop.sh: no studio program found; pass its path" >&2; exit 2; }
    # The icons: next to this script in the bundle (share/icons), in the checkout (../icons).
    icons=$here/icons; [ -d "$icons" ] || icons=$here/../icons
    mkdir -p "$data/applications" "$data/mime/packages" "$data/icons/hicolor/scalable/apps"
    sed -e "s|^Exec=studio |Exec=\"$exe\" |" -e "s|^TryExec=studio|TryExec=$exe|" \
        "$here/studio.desktop" > "$data/applications/studio.desktop"
    cp "$here/studio-mime.xml" "$data/mime/packages/studio-mime.xml"
    cp "$icons/studio.svg" "$data/icons/hicolor/scalable/apps/studio.svg"
    for png in "$icons"/png/studio-*.png; do
        size=$(basename "$png" .png); size=${size#studio-}
        mkdir -p "$data/icons/hicolor/${size}x${size}/apps"
        cp "$png" "$data/icons/hicolor/${size}x${size}/apps/studio.png"
    done
fi
# Refresh the desktop's caches where the tools are installed (they are optional).
command -v update-mime-database >/dev/null && update-mime-database "$data/mime" || true
command -v update-desktop-database >/dev/null && update-desktop-database "$data/applications" || true
command -v gtk-update-icon-cache >/dev/null && gtk-update-icon-cache -q -t "$data/icons/hicolor" || true
echo "Studio desktop entry ${1:+($1) }done in $data"
