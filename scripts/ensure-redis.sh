#!/usr/bin/env bash
# Make sure redis-server is installed (Debian/Ubuntu). The tests start their own private
# instance for a two-node livekit-server cluster and never use the package's service.
# Must run as root to install.
set -euo pipefail

if command -v redis-server >/dev/null; then
    echo "redis-server already installed" >&2
    exit 0
fi

if [[ "$(id -u)" -ne 0 ]]; then
    echo "error: redis-server is not installed and installing it needs root" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y redis-server
# the package may start its own service; the tests do not need it
if command -v systemctl >/dev/null && systemctl is-active --quiet redis-server 2>/dev/null; then
    systemctl stop redis-server || true
fi
command -v redis-server >/dev/null || { echo "error: redis-server not found after install" >&2; exit 1; }
