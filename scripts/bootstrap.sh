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
    # --no-compile: pip would byte-compile every module of every package (the type checker's,
    # the browser driver's, the agents framework's plugins), 25 s of the 45 s install on a
    # 2-core machine; Python compiles the modules a process imports, once, when it first does.
    PYTHONWARNINGS="ignore:Editable installation" \
        .venv/bin/python -m pip install --quiet --no-compile -e '.[test]'
    rm -f .venv/.installed-*
    touch "$stamp"
fi
scripts/install-livekit-server.sh >/dev/null
