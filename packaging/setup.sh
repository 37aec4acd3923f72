#!/usr/bin/env bash
# Set up Studio in ./.venv (idempotent: a second run with nothing changed takes a second).
#   bash packaging/setup.sh && .venv/bin/studio
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "Studio needs Python 3.11 or newer (found $("$PYTHON" --version 2>&1))." >&2
    exit 2
fi
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi

stamp=.venv/.studio-setup
want=$(cat pyproject.toml setup.py packaging/constraints.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "Installing Studio and its dependencies into .venv (first time: a few minutes)..." >&2
    .venv/bin/python -m pip install --quiet --disable-pip-version-check \
        -c packaging/constraints.txt -e '.[test]'
    echo "$want" > "$stamp"
fi
