#!/usr/bin/env bash
# Run the observer against a local development livekit-server, with the SQLite default.
# Installs what is missing, writes ./.env with the development server's settings when there
# is none (the observer commands of a second shell read it too), starts livekit-server on
# 127.0.0.1:7880 (unless one already answers there), migrates ./observer.db and runs the
# daemon until Ctrl-C. With a .env that names another LiveKit, it watches that one instead.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/bootstrap.sh
server_bin="$(scripts/install-livekit-server.sh | tail -n 1)"

dev_url="ws://127.0.0.1:7880"
if [[ ! -f .env ]]; then
    cat >.env <<EOF
# Written by scripts/dev.sh: the settings of its development livekit-server. For your own
# LiveKit, replace them (README: Run it against your LiveKit; .env.example lists them all).
LIVEKIT_URL=$dev_url
LIVEKIT_API_KEY=devkey
LIVEKIT_API_SECRET=dev-secret-for-local-use-only-0123456789
EOF
    echo "wrote .env with the development server's settings" >&2
fi

# the settings as the observer reads them: the environment over ./.env
read -r url key secret < <(.venv/bin/python -c '
from observer.cli import read_env
env = read_env(None)
print(*(env.get(n) or "-" for n in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET")))
')
[[ -n "${url:-}" ]] || { echo "could not read the settings (see above)" >&2; exit 1; }

server_pid=""
cleanup() { [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null || true; }
trap cleanup EXIT

if [[ "$url" != "$dev_url" && "$url" != "ws://localhost:7880" ]]; then
    echo "LIVEKIT_URL is $url: watching that server; no development server started" >&2
elif ! curl -fsS http://127.0.0.1:7880 >/dev/null 2>&1; then
    mkdir -p .dev
    "$server_bin" --dev --bind 127.0.0.1 --keys "${key}: ${secret}" >.dev/livekit-server.log 2>&1 &
    server_pid=$!
    for _ in $(seq 50); do
        curl -fsS http://127.0.0.1:7880 >/dev/null 2>&1 && break
        sleep 0.2
    done
    echo "livekit-server started (log: .dev/livekit-server.log)" >&2
fi

.venv/bin/observer migrate
echo "observer running; in another shell: .venv/bin/observer simulate --rooms 2 --agents 1 --duration 20" >&2
echo "then: .venv/bin/observer sessions" >&2
.venv/bin/observer run
