#!/usr/bin/env bash
# Make sure the PostgreSQL server binaries are installed (Debian/Ubuntu).
# The tests start their own private instance from /usr/lib/postgresql/<ver>/bin
# and never use the package's default cluster. Must run as root to install.
set -euo pipefail

if compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null; then
    echo "PostgreSQL server binaries already installed" >&2
    exit 0
fi

if [[ "$(id -u)" -ne 0 ]]; then
    echo "error: PostgreSQL is not installed and installing it needs root" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y postgresql

if ! compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null; then
    echo "error: postgresql installed but no /usr/lib/postgresql/*/bin/postgres found" >&2
    exit 1
fi
