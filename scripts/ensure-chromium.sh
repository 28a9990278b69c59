#!/usr/bin/env bash
# Make sure Debian's chromium is installed: the web page's tests drive it headless.
# Must run as root to install.
set -euo pipefail

if command -v chromium >/dev/null; then
    echo "chromium already installed" >&2
    exit 0
fi

if [[ "$(id -u)" -ne 0 ]]; then
    echo "error: chromium is not installed and installing it needs root" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends chromium fonts-dejavu-core
command -v chromium >/dev/null || { echo "error: chromium not found after install" >&2; exit 1; }
