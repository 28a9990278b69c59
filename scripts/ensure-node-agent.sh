#!/usr/bin/env bash
# Install the Node agent's packages (tests/node_agent: @livekit/agents and @livekit/rtc-node
# at the versions its package-lock.json pins) when node_modules is absent or older than the
# lock file. Installs Debian's nodejs and npm first when npm is missing (as root). Safe to run
# again; fast when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/../tests/node_agent"

if ! command -v npm >/dev/null; then
    if [[ "$(id -u)" -ne 0 ]]; then
        echo "error: npm is not installed and installing it needs root" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y nodejs npm
fi
stamp="node_modules/.installed-$(sha256sum package-lock.json | cut -c1-16)"
if [[ ! -f "$stamp" ]]; then
    npm ci --no-audit --no-fund --loglevel=error >&2
    touch "$stamp"
fi
