#!/usr/bin/env bash
# Prepare this checkout: a virtualenv in .venv with the project and its test tools,
# and livekit-server in the cache. Safe to run again; fast when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
    "$PYTHON" -m venv .venv
fi
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [[ ! -f "$stamp" ]]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    # quiet: setuptools' note that an editable install reads this checkout says what we want.
    # pip byte-compiles what it installs: keep it so, for where PYTHONDONTWRITEBYTECODE is set
    # (then no process writes a cache, and each would compile its imports again).
    PYTHONWARNINGS="ignore:Editable installation" .venv/bin/python -m pip install --quiet -e '.[test]'
    rm -f .venv/.installed-*
    touch "$stamp"
fi
scripts/install-livekit-server.sh >/dev/null
