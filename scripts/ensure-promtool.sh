#!/usr/bin/env bash
# Make sure promtool is installed (Debian/Ubuntu: it comes with the `prometheus` package).
# tests/test_alerts.py runs `promtool check rules` and `promtool test rules` on deploy/prometheus;
# nothing uses the package's Prometheus service. Must run as root to install.
set -euo pipefail

if command -v promtool >/dev/null; then
    echo "promtool already installed" >&2
    exit 0
fi

if [[ "$(id -u)" -ne 0 ]]; then
    echo "error: promtool is not installed and installing it needs root" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends prometheus
# the package may start its own service; the tests do not need it
if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
    systemctl stop prometheus || true
fi
command -v promtool >/dev/null || { echo "error: promtool not found after install" >&2; exit 1; }
